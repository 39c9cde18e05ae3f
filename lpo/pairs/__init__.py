"""Preference pairs: the one pair format and its readers, the gap scorers, and the MPCF filter."""
