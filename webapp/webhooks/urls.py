"""Hook URLs as people see them: a password in the URL's user part shown as ``***``.

A receiver may take HTTP Basic credentials in its URL
(``https://user:password@host/path``); deliveries send them as an
``Authorization: Basic`` header (``sender.py``). Every view of a hook (the
API's answers, the monitor) shows the URL with the password replaced and the
user name kept, so an operator still tells which account a hook uses (a user
part without a password is a token, shown as ``***`` whole). The
query string is shown as registered: nothing in the service treats it as a
credential.
"""

from __future__ import annotations

from capability_router.redaction import masked_url


def shown_url(url: str) -> str:
    """``url`` with the password of its user part (if any) replaced by ``***``,
    the rest as registered (``capability_router.redaction``)."""
    return masked_url(url)


def unmasked(given: str, stored: str) -> str:
    """The URL a ``PUT`` means: the stored one when ``given`` is how it is shown (a client
    sending back the hook it read must not make ``***`` the receiver's password)."""
    return stored if given != stored and given == shown_url(stored) else given
