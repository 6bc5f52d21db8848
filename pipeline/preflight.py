"""Checks of the paths a run reads and writes, made before anything runs.

A wrong path must fail in the first second, with exit 2 and a message that
names the fix, not an hour into a run or, worse, after its manifest is
written. Each check raises ConfigError.
"""

import functools
import glob
import os
import re
import tempfile
from typing import Sequence

from apache_beam.io.filesystem import BeamIOError
from apache_beam.io.filesystems import FileSystems
import google.auth
from google.auth.exceptions import DefaultCredentialsError
from google.auth.exceptions import RefreshError
from google.auth.exceptions import TransportError
from google.auth.transport.requests import Request

from pipeline.config import RunConfig
from pipeline.errors import ConfigError
from pipeline.errors import one_line
from run_directory.layout import LOCK_FILE
from run_directory.layout import MANIFEST_FILE
from run_directory.layout import STAGING_PREFIX
from run_directory.manifest import load_manifest

# Google Cloud's own scope, which Beam's Cloud Storage and BigQuery clients ask.
_CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
# One token request: google-auth's own default waits two minutes.
_TOKEN_TIMEOUT_S = 20

# Characters Beam's file systems read as a glob.
_GLOB = re.compile(r"[*?\[\]]")


def has_glob(path: str) -> bool:
  return bool(_GLOB.search(path))


def _is_local(path: str) -> bool:
  return FileSystems.get_scheme(path) is None


def absolute(path: str) -> str:
  """A local path made absolute; a URL (gs://...) as it is."""
  return os.path.abspath(path) if _is_local(path) else path


def _check_creatable(flag: str, value: str, directory: str):
  """A local `directory` exists, or could be made, and is writable.

  Nothing is left behind: a run that fails its checks leaves no trace. A
  file is made and removed in the nearest directory that exists, since
  permissions alone do not tell (root may write anywhere, but not in a
  read-only mount or /proc).
  """
  existing = os.path.abspath(directory)
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise ConfigError(
        f"{flag}={value}: {existing} is a file, not a directory.")
  try:
    with tempfile.TemporaryFile(dir=existing):
      pass
  except OSError as error:
    message = f"{flag}={value}: {existing} is not writable ({error.strerror})."
    raise ConfigError(message) from None


def _check_file_system(flag: str, path: str):
  """Beam has a file system for the path's scheme (http:// it has not)."""
  try:
    FileSystems.get_filesystem(path)
  except (ValueError, BeamIOError):
    raise ConfigError(
        f"{flag}={path}: Beam has no file system for this scheme; use a "
        "local path or gs://.") from None


def check_cloud_credentials(cloud_flags: Sequence[str]):
  """Google Cloud credentials exist, and give an access token, when flags
  ("--flag=value") write to Google Cloud.

  Without credentials Beam retries for half a minute, goes on anonymously
  and fails at the first write, after the run; when Google Cloud cannot be
  reached (no network, a proxy it needs) each request retries for two
  minutes, then a traceback. One token request, as the first write would
  make, tells both at once. (On a machine without credentials google.auth
  also asks the metadata server whether it runs on Google Cloud.)"""
  if not cloud_flags:
    return
  flag = cloud_flags[0]
  try:
    credentials, _ = google.auth.default(scopes=[_CLOUD_PLATFORM_SCOPE])
  except DefaultCredentialsError:
    raise ConfigError(
        f"{flag}: Google Cloud needs credentials, and none were "
        "found. Run `gcloud auth application-default login`, or set "
        "GOOGLE_APPLICATION_CREDENTIALS to a service account key file.") from None
  try:
    credentials.refresh(functools.partial(Request(), timeout=_TOKEN_TIMEOUT_S))
  except TransportError as e:
    raise ConfigError(
        f"{flag}: Google Cloud cannot be reached to sign in ({one_line(e)}). "
        "Check the network (and HTTPS_PROXY if it needs one), or write to a "
        "local path.") from None
  except RefreshError as e:
    raise ConfigError(
        f"{flag}: Google Cloud refused the credentials ({one_line(e)}). Run "
        "`gcloud auth application-default login` again, or set "
        "GOOGLE_APPLICATION_CREDENTIALS to a valid service account key "
        "file.") from None


def check_input(flag: str, pattern: str):
  """The pattern names at least one file."""
  _check_file_system(flag, pattern)
  if _is_local(pattern) and os.path.isdir(pattern):
    raise ConfigError(
        f"{flag}={pattern} is a directory; name its files with a glob, e.g. "
        f"{flag}='{os.path.join(pattern, '*.jsonl')}'.")
  try:
    files = FileSystems.match([pattern])[0].metadata_list
  except BeamIOError as error:
    raise ConfigError(f"{flag}={pattern} cannot be listed: {error}") from None
  if not files:
    if has_glob(pattern) and _is_local(pattern) and os.path.isfile(pattern):
      # Beam reads the flag as a glob, in which [1] is a character class.
      escaped = glob.escape(pattern)
      raise ConfigError(
          f"{flag}={pattern} is read as a glob, in which * ? [ ] are "
          f"special, so it does not match the file of that name: escape "
          f"them, {flag}='{escaped}'.")
    if has_glob(pattern):
      raise ConfigError(
          f"{flag}={pattern} matches no file. Check the path; quote a glob so "
          "that the shell does not expand it.")
    hint = "Check the path"
    if _is_local(pattern):
      nearest = os.path.dirname(os.path.abspath(pattern))
      while not os.path.isdir(nearest):
        nearest = os.path.dirname(nearest)
      hint += f" (the nearest directory that exists is {nearest})"
    raise ConfigError(
        f"{flag}={pattern} does not exist. {hint}, or pass a glob such as "
        f"{flag}='data/*.jsonl'.")


def check_output(output: str):
  """The run directory can be made, and holds no published run."""
  _check_file_system("--output", output)
  if has_glob(output):
    raise ConfigError(
        f"--output={output} holds glob characters (* ? [ ]), which Beam's "
        "file systems would read as a pattern; choose a plain directory name.")
  if _is_local(output):
    if os.path.exists(output) and not os.path.isdir(output):
      raise ConfigError(
          f"--output={output} is a file; name a run directory (new, or one "
          "without a manifest.json).")
    _check_creatable("--output", output, output)
  manifest = FileSystems.join(output, MANIFEST_FILE)
  if FileSystems.exists(manifest):
    raise ConfigError(
        f"--output={output} already holds a published run ({manifest}); "
        "choose a new run directory, e.g. one per date.")
  if _is_local(output):
    _check_not_another_directory(output)


def _check_not_another_directory(output: str):
  """A local --output that holds files is an earlier run's that did not
  publish (its lock or staging directory tells), or refused: publishing
  clears the files of its own directories (embeddings/, errors/, ...) that
  it does not list, which in a project or model directory would be the
  user's (found by fuzzing the flags: --output=MODEL_DIR was taken)."""
  try:
    entries = sorted(os.listdir(output))
  except OSError:
    return  # not there yet (or not a directory: checked above)
  if not entries or any(entry == LOCK_FILE or entry.startswith(STAGING_PREFIX)
                        for entry in entries):
    return
  shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
  raise ConfigError(
      f"--output={output} holds other files ({shown}) and no run of this "
      "pipeline; a run directory is the run's own (publishing clears its "
      "table directories of files it does not list): name a new or empty "
      f"directory, e.g. --output={os.path.join(output, 'runs', 'today')}.")


def check_latest_pointer(pointer: str):
  """The pointer is a file this run can write, outside every published run
  (whose files it would replace)."""
  _check_file_system("--latest_pointer", pointer)
  if has_glob(pointer):
    raise ConfigError(
        f"--latest_pointer={pointer} holds glob characters; name a plain "
        "file.")
  run_dir = _published_run_holding(pointer)
  if run_dir:
    raise ConfigError(
        f"--latest_pointer={pointer} is inside the published run {run_dir}, "
        "whose files it would replace; put it beside the runs, e.g. "
        f"--latest_pointer={FileSystems.join(_parent(run_dir), 'LATEST')}.")
  if not _is_local(pointer):
    return  # object stores: any name is a file
  if os.path.isdir(pointer):
    raise ConfigError(
        f"--latest_pointer={pointer} is a directory; name a file inside it, "
        f"e.g. {os.path.join(pointer, 'LATEST')}.")
  if os.path.isfile(pointer) and not _looks_like_pointer(pointer):
    # Publishing replaces it: a corpus, a model's file, a config.
    raise ConfigError(
        f"--latest_pointer={pointer} is a file of more than one line, not a "
        "latest pointer (one line naming a run directory), and publishing "
        "would replace it; name a new file beside the runs, e.g. "
        f"{os.path.join(os.path.dirname(os.path.abspath(pointer)), 'LATEST')}.")
  # The pointer is replaced by a rename in its directory.
  _check_creatable("--latest_pointer", pointer,
                   os.path.dirname(os.path.abspath(pointer)))


# A pointer holds one path; a longer file is something else.
_MAX_POINTER_BYTES = 64 * 1024


def _looks_like_pointer(path: str) -> bool:
  """One line at most (an emptied pointer or a stray byte is
  pipeline/latest_pointer.py's to tell, when it is read)."""
  if os.path.getsize(path) > _MAX_POINTER_BYTES:
    return False
  with open(path, "rb") as f:
    return len(f.read().strip().splitlines()) <= 1


def _parent(path: str) -> str:
  return (os.path.dirname(os.path.abspath(path)) if _is_local(path) else
          path.rstrip("/").rsplit("/", 1)[0])


def _published_run_holding(path: str):
  """The published run directory `path` lies in, if any: every directory
  above a local path; the one directory above a remote one (each look is
  a request)."""
  directory = _parent(path)
  while True:
    if _is_published_run(directory):
      return directory
    if not _is_local(path) or directory == os.path.dirname(directory):
      return None
    directory = os.path.dirname(directory)


def _is_published_run(directory: str) -> bool:
  """A manifest.json of a run (other tools name files so too)."""
  if not FileSystems.exists(FileSystems.join(directory, MANIFEST_FILE)):
    return False
  try:
    return "run_id" in load_manifest(directory)
  except (OSError, ValueError):
    return False


def check_local_paths(config: RunConfig):
  """check_input, check_output and check_latest_pointer of the local paths
  among the flags, before TensorFlow is imported: a typo there fails in
  about 2 s, not 6. Planning checks every path again, the remote ones
  (which need credentials, and the network) among them."""
  paths = [(check_input, "--input", config.input.input),
           (check_input, "--neighbours_of", config.neighbours.neighbours_of),
           (lambda flag, path: check_output(path), "--output",
            config.outputs.output),
           (lambda flag, path: check_latest_pointer(path), "--latest_pointer",
            config.nightly.latest_pointer)]
  for check, flag, path in paths:
    if path and _is_local(path):
      check(flag, path)
  root = config.model.model_root
  if root and _is_local(root) and not os.path.isdir(root):
    # Read only for a catalogue name or handle: with a model directory a
    # mistyped mirror would go unnoticed.
    raise ConfigError(
        f"--model_root={root} is not a directory: name the local mirror of "
        "TF Hub models (MODEL_ROOT/tensorflow/bert_en_uncased_L-12_H-768_A-12"
        "/4/...), or leave the flag out.")

