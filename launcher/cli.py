"""mlm-launch: placeholder until the launcher issue lands."""

import sys


def main(argv=None) -> int:
    print("mlm-launch: not built yet", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
