"""python -m resnet_ext {bench,report,predict}"""
import sys

from .cli import OneLineArgumentParser


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
