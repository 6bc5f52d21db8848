"""Real English sentences from a package every Python has: pydoc's topic help.

About 2,500 distinct sentences of the Python reference documentation, mean
~110 characters: real prose with code, punctuation and numbers mixed in, and
no download needed.
"""

import re

from pydoc_data.topics import topics


def real_sentences(limit=None) -> list:
  text = "\n".join(topics[key] for key in sorted(topics))
  sentences = []
  for paragraph in re.split(r"\n\s*\n", text):
    paragraph = " ".join(paragraph.split())
    for sentence in re.split(r"(?<=[.!?])\s+(?=[A-Z])", paragraph):
      letters = sum(c.isalpha() for c in sentence)
      if 30 <= len(sentence) <= 400 and letters > 0.6 * len(sentence):
        sentences.append(sentence)
  sentences = list(dict.fromkeys(sentences))  # distinct, in order
  return sentences[:limit] if limit else sentences
