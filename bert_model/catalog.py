"""The catalogue of TF Hub BERT models, and where a hub handle lives on disk.

`--model` takes a short name from this catalogue (`experts/pubmed`,
`bert_en_cased_L-24_H-1024_A-16`, `small_bert/bert_en_uncased_L-4_H-256_A-4`,
optionally with a version: `bert_en_uncased_L-12_H-768_A-12/2`) or a full
handle (`https://tfhub.dev/google/experts/bert/pubmed/2`). Each encoder entry
names the preprocess model it was trained with, so the matching preprocess is
picked automatically ("preprocessing must match the model");
`--preprocessor` overrides it, with a short name, a handle or a path.

A handle is found, in this order, without opening any connection:

1. `--model_root` (a mirror, local or gs://): the handle's URL path under the
   root, e.g. `https://tfhub.dev/tensorflow/bert_en_uncased_L-12_H-768_A-12/4`
   -> `MODEL_ROOT/tensorflow/bert_en_uncased_L-12_H-768_A-12/4/` holding the
   extracted SavedModel (`saved_model.pb`, `variables/`, `assets/`). With a
   mirror, a handle that is not in it is an error: nothing is downloaded.
2. The TF Hub cache, laid out as tensorflow_hub lays it out
   (tensorflow_hub/resolver.py `tfhub_cache_dir`, compressed_module_resolver.py
   `_module_dir`): `$TFHUB_CACHE_DIR` (default `<tmp>/tfhub_modules`) holds one
   sub-directory per handle, named by the SHA-1 hex digest of the handle
   string exactly as written, e.g.
   `sha1("https://tfhub.dev/google/experts/bert/pubmed/2")`.
3. Otherwise tensorflow_hub downloads the handle into that cache (needs the
   network; `hub.resolve`).

Model facts in the catalogue (layers, hidden size, heads, vocabulary) are the
published ones; the pipeline still reads the real ones from the SavedModel
when it can (a local model is loaded once when the job is built).
"""

import dataclasses
import difflib
import hashlib
import re
from typing import Dict, List, Optional, Tuple
from urllib.parse import urlparse

TFHUB = "https://tfhub.dev"
LICENSE = "Apache-2.0"  # every model of the TF Hub BERT collection

# Preprocess models of the collection (TF Hub preprocess interface).
UNCASED_PREPROCESS = f"{TFHUB}/tensorflow/bert_en_uncased_preprocess/3"
CASED_PREPROCESS = f"{TFHUB}/tensorflow/bert_en_cased_preprocess/3"
MULTI_CASED_PREPROCESS = f"{TFHUB}/tensorflow/bert_multi_cased_preprocess/3"
ZH_PREPROCESS = f"{TFHUB}/tensorflow/bert_zh_preprocess/3"

_VOCAB_SIZES = {
    UNCASED_PREPROCESS: 30522,
    CASED_PREPROCESS: 28996,
    MULTI_CASED_PREPROCESS: 119547,
    ZH_PREPROCESS: 21128,
}


@dataclasses.dataclass(frozen=True)
class CatalogEntry:
  """One model of the catalogue, at one version.

  name: the short name, without version (`experts/pubmed`).
  handle: the full TF Hub handle of this version.
  kind: "encoder" or "preprocess".
  preprocess: for encoders, the handle of the matching preprocess model.
    Used for encoders with the dict interface; a v1 encoder (list inputs,
    versions 1 and 2 of `bert_en_*`) carries its own vocabulary and the
    pipeline builds its tokenizer from it.
  lower_case: whether the model's tokenizer lower-cases (uncased models).
  """
  name: str
  handle: str
  kind: str
  preprocess: Optional[str] = None
  lower_case: bool = True
  num_layers: int = 0
  hidden_size: int = 0
  num_attention_heads: int = 0
  vocab_size: int = 0
  max_position_embeddings: int = 512
  license: str = LICENSE

  @property
  def version(self) -> int:
    return int(self.handle.rsplit("/", 1)[1])


# name -> (handle without version, versions, latest first)
_Family = Tuple[str, Tuple[int, ...], dict]
_FAMILIES: Dict[str, _Family] = {}


def _add(name: str, path: str, versions: Tuple[int, ...], **facts):
  _FAMILIES[name] = (f"{TFHUB}/{path}", versions, facts)


def _shape_facts(name: str) -> dict:
  """L/H/A from a name such as bert_en_uncased_L-12_H-768_A-12."""
  match = re.search(r"L-(\d+)_H-(\d+)_A-(\d+)", name)
  if not match:
    return {}
  layers, hidden, heads = (int(g) for g in match.groups())
  return dict(num_layers=layers, hidden_size=hidden, num_attention_heads=heads)


def _encoder(name: str, path: str, versions, preprocess: str, **facts):
  facts = {**_shape_facts(name), **facts}
  _add(name, path, versions, kind="encoder", preprocess=preprocess,
       lower_case=preprocess == UNCASED_PREPROCESS,
       vocab_size=_VOCAB_SIZES[preprocess], **facts)


# Preprocess models.
for _handle in _VOCAB_SIZES:
  _name = _handle.split("/")[-2]
  _add(_name, _handle[len(TFHUB) + 1:].rsplit("/", 1)[0], (3,),
       kind="preprocess", lower_case=_handle == UNCASED_PREPROCESS,
       vocab_size=_VOCAB_SIZES[_handle])

# BERT (Devlin et al.): versions 1-2 have the v1 interface, 3-4 the dict one.
for _size in ("L-12_H-768_A-12", "L-24_H-1024_A-16"):
  for _variant in ("uncased", "cased", "wwm_uncased", "wwm_cased"):
    if _variant.startswith("wwm") and _size.startswith("L-12"):
      continue  # whole word masking was only released for BERT-large
    _name = f"bert_en_{_variant}_{_size}"
    _encoder(_name, f"tensorflow/{_name}", (4, 3, 2, 1),
             UNCASED_PREPROCESS if _variant.endswith("uncased") else
             CASED_PREPROCESS)
_encoder("bert_multi_cased_L-12_H-768_A-12",
         "tensorflow/bert_multi_cased_L-12_H-768_A-12", (4, 3, 2, 1),
         MULTI_CASED_PREPROCESS)
_encoder("bert_zh_L-12_H-768_A-12", "tensorflow/bert_zh_L-12_H-768_A-12",
         (4, 3, 2, 1), ZH_PREPROCESS)

# Small BERTs (Turc et al.), uncased.
for _layers in (2, 4, 6, 8, 10, 12):
  for _hidden in (128, 256, 512, 768):
    _name = f"bert_en_uncased_L-{_layers}_H-{_hidden}_A-{_hidden // 64}"
    _encoder(f"small_bert/{_name}", f"tensorflow/small_bert/{_name}", (2, 1),
             UNCASED_PREPROCESS)

# BERT experts: BERT-base uncased, further trained on a domain or a task.
_EXPERTS = {
    "wiki_books": "wiki_books", "wiki_books/mnli": "mnli",
    "wiki_books/qnli": "qnli", "wiki_books/qqp": "qqp",
    "wiki_books/squad2": "squad2", "wiki_books/sst2": "sst2",
    "pubmed": None, "pubmed/squad2": None,
}
for _path, _alias in _EXPERTS.items():
  _encoder(f"experts/{_path}", f"google/experts/bert/{_path}", (2,),
           UNCASED_PREPROCESS, num_layers=12, hidden_size=768,
           num_attention_heads=12)

# Other BERT-style encoders of the collection that use the BERT preprocess.
_encoder("electra_small", "google/electra_small", (2, 1), UNCASED_PREPROCESS,
         num_layers=12, hidden_size=256, num_attention_heads=4)
_encoder("electra_base", "google/electra_base", (2, 1), UNCASED_PREPROCESS,
         num_layers=12, hidden_size=768, num_attention_heads=12)
_encoder("electra_large", "google/electra_large", (2, 1), UNCASED_PREPROCESS,
         num_layers=24, hidden_size=1024, num_attention_heads=16)
_encoder("talkheads_ggelu_bert_en_base",
         "tensorflow/talkheads_ggelu_bert_en_base", (2, 1), UNCASED_PREPROCESS,
         num_layers=12, hidden_size=768, num_attention_heads=12)
_encoder("talkheads_ggelu_bert_en_large",
         "tensorflow/talkheads_ggelu_bert_en_large", (2, 1),
         UNCASED_PREPROCESS, num_layers=24, hidden_size=1024,
         num_attention_heads=16)
_encoder("lambert_en_uncased_L-24_H-1024_A-16",
         "tensorflow/lambert_en_uncased_L-24_H-1024_A-16", (2, 1),
         UNCASED_PREPROCESS)

# Short aliases: experts/mnli = experts/wiki_books/mnli, and so on.
_ALIASES = {f"experts/{alias}": f"experts/{path}"
            for path, alias in _EXPERTS.items()
            if alias and alias != path}


def _entry(name: str, version: int) -> CatalogEntry:
  base, _, facts = _FAMILIES[name]
  return CatalogEntry(name=name, handle=f"{base}/{version}", **facts)


def names(kind: Optional[str] = None) -> List[str]:
  """Every short name (aliases included), optionally of one kind."""
  found = [n for n, (_, _, facts) in _FAMILIES.items()
           if kind is None or facts["kind"] == kind]
  found += [a for a, n in _ALIASES.items()
            if kind is None or _FAMILIES[n][2]["kind"] == kind]
  return sorted(found)


def entries() -> List[CatalogEntry]:
  """The latest version of every model."""
  return [_entry(name, versions[0])
          for name, (_, versions, _) in sorted(_FAMILIES.items())]


class UnknownModelError(ValueError):
  """A short name or version the catalogue does not hold."""


def lookup_name(name: str) -> CatalogEntry:
  """A short name, optionally `/VERSION`, to its entry (latest by default).

  Raises UnknownModelError naming close matches.
  """
  base, version = name.strip().rstrip("/"), None
  match = re.fullmatch(r"(.+)/(\d+)", base)
  if match and _canonical(match.group(1)) is not None:
    base, version = match.group(1), int(match.group(2))
  canonical = _canonical(base)
  if canonical is None:
    close = difflib.get_close_matches(base, names(), n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise UnknownModelError(
        f"{name!r} is not a model of the catalogue.{hint} List them with "
        "`python -m pipeline.catalog`; or pass a model directory or a full "
        "handle (https://tfhub.dev/...).")
  _, versions, _ = _FAMILIES[canonical]
  if version is None:
    version = versions[0]
  elif version not in versions:
    raise UnknownModelError(
        f"{name!r}: {canonical} has versions "
        f"{', '.join(str(v) for v in sorted(versions))}, not {version}.")
  return _entry(canonical, version)


def _canonical(name: str) -> Optional[str]:
  name = _ALIASES.get(name, name)
  return name if name in _FAMILIES else None


def normalize_handle(handle: str) -> str:
  """The handle as tensorflow_hub hashes it: as written, minus a trailing /."""
  return handle.strip().rstrip("/")


def lookup_handle(handle: str) -> Optional[CatalogEntry]:
  """The catalogue entry of a full handle, or None for one it does not know.

  tfhub.dev and its mirror hub.tensorflow.google.cn are the same catalogue.
  """
  parsed = urlparse(normalize_handle(handle))
  if parsed.netloc not in ("tfhub.dev", "hub.tensorflow.google.cn"):
    return None
  match = re.fullmatch(r"/(.+)/(\d+)", parsed.path)
  if not match:
    return None
  path, version = match.group(1), int(match.group(2))
  for name, (base, versions, _) in _FAMILIES.items():
    if base == f"{TFHUB}/{path}" and version in versions:
      return _entry(name, version)
  return None


def is_handle(model: str) -> bool:
  return model.startswith(("https://", "http://"))


def cache_dir() -> str:
  """The TF Hub cache directory, exactly as tensorflow_hub chooses it."""
  # Imported here: tensorflow_hub imports Keras (seconds of every start),
  # and only runs on TF Hub handles need it.
  from tensorflow_hub import resolver  # pylint: disable=g-import-not-at-top
  return resolver.tfhub_cache_dir(use_temp=True)


def cache_path(handle: str, tfhub_cache_dir: Optional[str] = None) -> str:
  """Where tensorflow_hub keeps (or would download) a handle."""
  directory = (tfhub_cache_dir or cache_dir()).rstrip("/")
  digest = hashlib.sha1(handle.encode("utf8")).hexdigest()
  return f"{directory}/{digest}"


def mirror_path(model_root: str, handle: str) -> str:
  """Where a --model_root mirror keeps a handle: its URL path under the root."""
  path = urlparse(normalize_handle(handle)).path.strip("/")
  return f"{model_root.rstrip('/')}/{path}"


def aliases() -> Dict[str, str]:
  """Other short names of catalogue models: alias -> name."""
  return dict(_ALIASES)
