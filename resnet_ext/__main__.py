"""python -m resnet_ext {bench,report,predict}"""
import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m resnet_ext", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    from . import bench, predict, report
    bench.add_arguments(sub.add_parser("bench", help="model throughput: torchvision vs resnet_ext"))
    report.add_arguments(sub.add_parser("report", help="benchmark JSON -> markdown table + PNG chart"))
    predict.add_arguments(sub.add_parser("predict", help="top-k classes of images with ImageNet weights"))
    args = parser.parse_args(argv)
    return {"bench": bench.main, "report": report.main, "predict": predict.main}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
