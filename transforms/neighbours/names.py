"""The neighbours stage's modes, output tags and defaults."""

# Keys of the dict every neighbours transform returns: each query's
# neighbours, (query id, [(score, neighbour id)] best first), the elements of
# the neighbours table (run_directory.tables.neighbour_table makes its rows),
# and one dict of figures for the manifest.
NEIGHBOUR_LISTS = "neighbour_lists"
STATS = "stats"
# With an index directory, ann mode also returns the files of its index
# under this key: {"faiss": paths, "ids": paths} (run_directory/ann_index.py).
INDEX_FILES = "index_files"

EXACT = "exact"
ANN = "ann"
MODES = (EXACT, ANN)

# What a neighbours row is about (--neighbours_level): a document, or a chunk
# of one (--chunk_size), whose neighbours are other documents' chunks.
DOCUMENT = "document"
CHUNK = "chunk"
LEVELS = (DOCUMENT, CHUNK)
# At chunk level the ANN index is asked for this many more candidates than
# K, so that dropping the query document's own chunks still leaves K.
CHUNK_LEVEL_EXTRA_CANDIDATES = 32
# At document level: room for the query itself, and for near ties with the
# K-th (copies of one text among them), which the index orders by its own
# float32 scores and exact mode by the canonical ones and then the smaller
# id. With one (the query alone) a flat index, exact in principle, found
# 99.7% of the exact neighbours of 825 package descriptions; with 3, all.
DOCUMENT_LEVEL_EXTRA_CANDIDATES = 8

DEFAULT_BLOCK_SIZE = 4096
DEFAULT_RECALL_SAMPLE_SIZE = 1000
# HNSW settings, about (4 H + 8 M) bytes a document. Measured recall@10: 1.0
# on clustered vectors (5k x 32, 20k x 384); 0.94 on isotropic Gaussian 20k x
# 384, the structureless worst case (0.955 at efSearch 192, 0.968 at 256).
# efConstruction above FAISS's default of 40 builds a better graph for a
# one-off cost.
DEFAULT_HNSW_M = 32
DEFAULT_EF_CONSTRUCTION = 200
DEFAULT_EF_SEARCH = 256
# Below this corpus size an exact flat index is fast enough (N^2 H flops in
# one worker) and has recall 1.
DEFAULT_FLAT_INDEX_BELOW = 20_000
