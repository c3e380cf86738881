"""URLs as people see them: a password in a URL's user part (and, when asked, its query)
shown as ``***``; a user part without a password too (it is a token there).

One function for every place that shows a URL that may carry credentials: webhook
URLs (``webapp.webhooks.urls``), model catalog URLs to customers and in download
errors (``capability_router.catalog``), the log shipping endpoint on ``/status``
(``machine.shipping``). Here, in the lowest layer, so each may import it. Beside a
password the user name is kept (an operator tells which account is used); alone it
is hidden, as pip and git hide it: ``https://<token>@host`` is how GitHub, Hugging
Face mirrors and log endpoints take a token. The rest reads as given,
spliced rather than rebuilt (``urlunsplit`` drops an empty ``?``, normalises
case). A URL that does not parse is shown as ``<unreadable url>`` when it may
still hold a secret.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

#: What a password (or a masked query) is shown as.
MASK = "***"
#: What an unparseable URL that may hold a secret is shown as.
UNREADABLE = "<unreadable url>"


def masked_url(url: str, *, query: bool = False) -> str:
    """``url`` with the password of its user part (if any) replaced by ``***`` (a user
    part without a password: all of it), and its query too when ``query`` (a signed
    link's token); the rest as given."""
    try:
        parts = urlsplit(url)
        password, username = parts.password, parts.username
    except ValueError:  # a bad port or bracket: the parts cannot be trusted
        risky = "@" in url or (query and "?" in url)
        return UNREADABLE if risky else url
    new_query = MASK if query and parts.query else parts.query
    lone_user = password is None and bool(username)
    if password is None and not lone_user and new_query == parts.query:
        return url
    netloc = parts.netloc
    if password is not None:
        netloc = f"{username}:{MASK}@{netloc.rpartition('@')[2]}"
    elif lone_user:
        netloc = f"{MASK}@{netloc.rpartition('@')[2]}"
    start = url.find("//") + 2
    if start > 1 and url[start:start + len(parts.netloc)] == parts.netloc:
        rest = url[start + len(parts.netloc):]
        if new_query != parts.query:  # as urlsplit: the fragment first, then the query
            before, hash_, fragment = rest.partition("#")
            rest = f"{before.partition('?')[0]}?{new_query}{hash_}{fragment}"
        spliced = url[:start] + netloc + rest
        check = urlsplit(spliced)
        if (check.netloc, check.query) == (netloc, new_query):
            return spliced
    # Not spliceable as read (characters urlsplit drops, no "//"): rebuilt from the parts.
    return urlunsplit(parts._replace(netloc=netloc, query=new_query))
