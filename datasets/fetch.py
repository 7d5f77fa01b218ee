"""Fetch or stage the course's data sets: a shortcut for `python -m diffuse_edu data ...`.

    python datasets/fetch.py mnist            # download through torchvision (online)
    python datasets/fetch.py --stage FOLDER   # copy staged .npz files from FOLDER (offline)
"""

import sys

from diffuse_edu.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["--stage"]:
        sys.exit(main(["data", "stage", *args[1:]]))
    sys.exit(main(["data", "fetch", *args] if args else ["data", "list"]))
