"""Errors relp_lens raises for bad input. All subclass ``ValueError`` so callers can catch either."""


class RelPLensError(ValueError):
    """Bad input to relp_lens: the message names the offending prompt, answer, hook or value."""
