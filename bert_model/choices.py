"""The model library's settings a user chooses: their allowed values and
defaults, without TensorFlow.

The flags declare and check them before TensorFlow is imported (a wrong flag
fails in about 2 s: pipeline/main.py), and the modules that use them
(loaded_model.py, metadata.py, chunking.py) take them from here.
"""

# How the token vectors become one vector (metadata.py; export.py builds it
# into the model directory as its default).
POOLING_MODES = ("mean", "cls", "pooler", "max")

# float32: as exported. bfloat16: TensorFlow's automatic mixed precision for
# oneDNN rewrites the encoder's matmuls to bfloat16 (AMX / AVX-512 BF16 CPUs).
# mixed_float16: automatic mixed precision to float16 (GPUs with tensor cores).
# Both keep softmax, LayerNorm and the outputs in float32.
PRECISIONS = ("float32", "bfloat16", "mixed_float16")

# Padded-token budget of one encoder call unless the caller gives one.
DEFAULT_MAX_CALL_TOKENS = 16384

# --max_chunks when not given: a document of 512 chunks of 256 wordpieces is
# a book (~100k words); longer ones are more likely a concatenation.
DEFAULT_MAX_CHUNKS = 512


def default_overlap(chunk_size: int) -> int:
  """Wordpieces shared by consecutive chunks unless given: an eighth."""
  return chunk_size // 8
