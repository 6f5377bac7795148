"""The apps built on lstmfast: the long-term dependency demo (``python -m lstmfast``)
and the character-level text model (``python -m lstmfast text``). Not part of the API."""
