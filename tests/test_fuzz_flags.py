"""Property tests of the command line, checked without IO (no pipeline, no
model, no file read): any combination of the pipeline's flags, with valid,
boundary and wrong values, is either taken, or refused with a ConfigError
of one line that names a flag given; a misspelt flag is refused with the
flag meant."""

import re

from apache_beam.options.pipeline_options import PipelineOptions
from hypothesis import given
from hypothesis import strategies as st

from pipeline.config import check_flags
from pipeline.config import RunConfig
from pipeline.errors import ConfigError
from pipeline.flags import flag_actions

# Every flag of the pipeline, and whether it takes a value.
_ACTIONS = [action for actions in flag_actions().values()
            for action in actions]
_FLAGS = {action.option_strings[0]: action for action in _ACTIONS}

_NUMBERS = st.one_of(
    st.sampled_from(["0", "1", "-1", "3", "8", "64", "4096", "65537",
                     str(2**31), str(2**70), "1.5", "", " ", "abc", "nan",
                     "inf", "-inf", "1e400", "0x10", "-0", "0.95", "1e-320"]),
    st.integers(-10, 10**7).map(str),
    st.floats().map(repr))
_WORDS = st.sampled_from(
    ["id", "text", "pair", "lang", "", " ", "a,b", "a,,a", ",", "x y", "ü",
     "runs/x", "gs://b/x", "http://h/x", "/", "latest", "{run_id}",
     "data/*.jsonl", "q.csv", "q.txt", "-1,-4", "all", "../x", "a" * 300])
_FLAG_RE = re.compile(r"--[a-z_]+")


def _values(action):
  if action.choices:
    return st.one_of(st.sampled_from([str(c) for c in action.choices]),
                     st.sampled_from(["", "bogus", "MEAN", "Float16"]))
  if action.type in (int, float):
    return _NUMBERS
  return _WORDS


@st.composite
def command_lines(draw):
  argv = ["--input=corpus/*.jsonl", "--output=runs/x"]
  for flag in draw(st.lists(st.sampled_from(sorted(_FLAGS)), max_size=6,
                            unique=True)):
    action = _FLAGS[flag]
    if action.nargs == 0:
      argv.append(flag)
      continue
    value = draw(_values(action))
    argv += [f"{flag}={value}"] if draw(st.booleans()) else [flag, value]
  return argv


@given(command_lines())
def test_any_combination_of_flags_is_taken_or_refused_naming_a_flag(argv):
  try:
    config = check_flags(argv)
  except ConfigError as error:
    message = str(error)
    assert "\n" not in message.strip(), message
    given_flags = {arg.split("=", 1)[0] for arg in argv if arg.startswith("--")}
    assert set(_FLAG_RE.findall(message)) & given_flags, (argv, message)
  else:
    assert isinstance(config, RunConfig)


def _typos(flag: str):
  body = flag[2:]
  return st.sampled_from(
      ["--" + body.replace("_", "-"), "--" + body.replace("_", ""),
       "-" + body, "--" + body.upper()] +
      ["--" + body[:i] + body[i + 1:] for i in range(len(body))] +
      ["--" + body[:i] + body[i + 1] + body[i] + body[i + 2:]
       for i in range(len(body) - 1)])


_KNOWN = {"--" + name for name in PipelineOptions([]).get_all_options()}


@given(st.sampled_from(sorted(_FLAGS)).flatmap(
    lambda flag: st.tuples(st.just(flag), _typos(flag))))
def test_a_misspelt_flag_is_refused_with_the_flag_meant(case):
  # Found by fuzzing: --VERBOSE and -verbose had no hint (the second was
  # "an unexpected argument").
  flag, typo = case
  if typo in _KNOWN:
    return  # another flag's name
  try:
    check_flags(["--input=a.jsonl", "--output=runs/x", f"{typo}=1"])
  except ConfigError as error:
    assert f"unknown flag(s): {typo} (did you mean {flag}?)" in str(error)
  else:
    raise AssertionError(f"{typo} was taken")
