"""Lists the catalogue of TF Hub BERT models --model takes by short name.

  python -m pipeline.catalog
"""

from bert_model import catalog


def main():
  print(f"{'short name':42} {'latest handle':84} preprocess")
  for entry in catalog.entries():
    preprocess = entry.preprocess.split("/")[-2] if entry.preprocess else "-"
    print(f"{entry.name:42} {entry.handle:84} {preprocess}")
  print("\naliases: " + ", ".join(
      f"{alias} = {name}" for alias, name in sorted(catalog.aliases().items())))
  print("\nA version may follow the short name, e.g. "
        "bert_en_uncased_L-12_H-768_A-12/2.")


if __name__ == "__main__":
  main()
