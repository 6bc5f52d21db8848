"""Lists the catalogue of TF Hub BERT models --model takes by short name.

  python -m pipeline.catalog
"""

import argparse
import sys

from pipeline.errors import CommandLineParser
from transforms import native_logs


def _catalog():
  # Imported here, not at the top: the model library imports TensorFlow,
  # whose start-up notices main captures (transforms/native_logs.py).
  from bert_model import catalog  # pylint: disable=g-import-not-at-top
  return catalog


def main(argv=None) -> int:
  CommandLineParser(
      prog="python -m pipeline.catalog", description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(
          sys.argv[1:] if argv is None else argv)
  with native_logs.captured():
    native_logs.start_tensorflow()
    catalog = _catalog()
  print(f"{'short name':42} {'latest handle':84} preprocess")
  for entry in catalog.entries():
    preprocess = entry.preprocess.split("/")[-2] if entry.preprocess else "-"
    print(f"{entry.name:42} {entry.handle:84} {preprocess}")
  print("\naliases: " + ", ".join(
      f"{alias} = {name}" for alias, name in sorted(catalog.aliases().items())))
  print("\nA version may follow the short name, e.g. "
        "bert_en_uncased_L-12_H-768_A-12/2.")
  return 0


if __name__ == "__main__":
  sys.exit(main())
