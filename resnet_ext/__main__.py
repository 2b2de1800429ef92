"""python -m resnet_ext {bench,report}"""
import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m resnet_ext", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    from . import bench
    bench.add_arguments(sub.add_parser("bench", help="model throughput: torchvision vs resnet_ext"))
    args = parser.parse_args(argv)
    if args.command == "bench":
        return bench.main(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
