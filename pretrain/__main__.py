"""mlm-train: placeholder until the trainer issue lands."""

import sys


def main(argv=None) -> int:
    print("mlm-train: not built yet", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
