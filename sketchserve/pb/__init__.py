"""Generated protobuf code lives here (make proto); never edited, gitignored."""
