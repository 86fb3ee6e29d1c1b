"""The `sketchserve` command: a thin dispatcher whose subcommands load lazily.

Each subcommand lives in the package that owns it and exposes
``main(argv: list[str]) -> int``. Nothing heavy (torch, grpc) is imported until
a subcommand runs, so `sketchserve --help` and the client commands work on the
base install.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass

EXIT_USAGE = 2  # a command line that cannot run (argparse's code)


@dataclass(frozen=True)
class Subcommand:
    target: str
    summary: str


def _subcommands() -> dict[str, Subcommand]:
    return {
        "train": Subcommand("sketchserve.training.cli:train_main", "train a Sketch-RNN VAE on drawing files"),
        "export": Subcommand("sketchserve.training.cli:export_main", "export a run as a TorchScript artifact"),
        "sign": Subcommand("sketchserve.signing:sign_main", "sign an artifact's manifest with an ed25519 key"),
        "sample": Subcommand("sketchserve.training.cli:sample_main", "draw new sketches from an artifact"),
        "cluster": Subcommand(
            "sketchserve.training.clustering:cluster_main", "k-means on latent codes, stored in the artifact"
        ),
        "gallery": Subcommand("sketchserve.training.gallery:gallery_main", "an HTML gallery of an artifact's clusters"),
        "serve": Subcommand("sketchserve.server.main:main", "serve an artifact over gRPC"),
        "encode": Subcommand("sketchserve.client.cli:encode_main", "encode drawings with a server"),
        "assign": Subcommand("sketchserve.client.cli:assign_main", "assign drawings to a server's clusters"),
        "reconstruct": Subcommand("sketchserve.client.cli:reconstruct_main", "redraw drawings with a server"),
        "score": Subcommand("sketchserve.client.cli:score_main", "score drawings with a server"),
        "info": Subcommand("sketchserve.client.cli:info_main", "show a server's model info"),
        "clusters": Subcommand("sketchserve.client.cli:clusters_main", "list a server's clusters"),
    }


def _usage(table: dict[str, Subcommand]) -> str:
    width = max(len(name) for name in table)
    lines = ["usage: sketchserve COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {sub.summary}" for name, sub in table.items()]
    lines += ["", "Run `sketchserve COMMAND --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    table = _subcommands()
    if not args:  # a command is required: usage on stderr, exit 2 (as argparse does)
        sys.stderr.write(_usage(table) + "\n")
        return EXIT_USAGE
    if args[0] in {"-h", "--help", "help"}:
        sys.stdout.write(_usage(table) + "\n")
        return 0
    name, rest = args[0], args[1:]
    sub = table.get(name)
    if sub is None:
        sys.stderr.write(f"sketchserve: unknown command {name!r}\n\n{_usage(table)}\n")
        return EXIT_USAGE
    module_name, func_name = sub.target.split(":")
    module = importlib.import_module(module_name)
    return int(getattr(module, func_name)(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
