"""python -m resnet_ext {bench,report,predict}"""
import argparse
import sys


class OneLineArgumentParser(argparse.ArgumentParser):
    """A bad argument is one line on stderr naming it and what was expected (argparse's message), exit code 2,
    instead of argparse's usage block followed by the message."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def main(argv=None) -> int:
    parser = OneLineArgumentParser(prog="python -m resnet_ext", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)  # subparsers are OneLineArgumentParsers too
    from . import bench, predict, report
    bench.add_arguments(sub.add_parser("bench", help="model throughput: torchvision vs resnet_ext"))
    report.add_arguments(sub.add_parser("report", help="benchmark JSON -> markdown table + PNG chart"))
    predict.add_arguments(sub.add_parser("predict", help="top-k classes of images with ImageNet weights"))
    args = parser.parse_args(argv)
    try:
        return {"bench": bench.main, "report": report.main, "predict": predict.main}[args.command](args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
