"""python -m resnet_ext {bench,report,predict}"""
import os
import sys

from .cli import OneLineArgumentParser


def main(argv=None) -> int:
    parser = OneLineArgumentParser(prog="python -m resnet_ext", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)  # subparsers are OneLineArgumentParsers too
    from . import bench, predict, report
    commands = {"bench": (bench, "model throughput: torchvision vs resnet_ext"),
                "report": (report, "benchmark JSON -> markdown table + PNG chart"),
                "predict": (predict, "top-k classes of images with ImageNet weights")}
    parsers = {}
    for name, (module, text) in commands.items():
        parsers[name] = sub.add_parser(name, help=text)
        module.add_arguments(parsers[name])
    args, extra = parser.parse_known_args(argv)
    if extra:  # named by the command's own parser, which points at its own --help
        parsers[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return commands[args.command][0].main(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly, as other command-line tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 141


if __name__ == "__main__":
    sys.exit(main())
