"""``masked_url``: the one function that shows a URL's password (and query, when asked)
as ``***``, used by webhook views, the model catalog and the log shipper's stats."""

from __future__ import annotations

import pytest

from capability_router.catalog import redacted_url
from capability_router.redaction import UNREADABLE, masked_url
from machine.shipping import without_password
from webapp.webhooks.urls import shown_url

CASES = [  # (url, shown with the password masked, shown with the query masked too)
    ("https://alice:s3cret@hooks.example/h?x=1", "https://alice:***@hooks.example/h?x=1",
     "https://alice:***@hooks.example/h?***"),
    # Split at the last @ (as urlsplit and the senders do): all of the password is hidden.
    ("https://alice:p@ss@hooks.example:8443/h", "https://alice:***@hooks.example:8443/h",
     "https://alice:***@hooks.example:8443/h"),
    ("http://alice:p%40ss@[::1]:9/h?#f", "http://alice:***@[::1]:9/h?#f",
     "http://alice:***@[::1]:9/h?#f"),
    ("https://:token@hooks.example", "https://:***@hooks.example", "https://:***@hooks.example"),
    # A user part alone is a token (https://<token>@github.com): hidden whole. Before, shown.
    ("https://ghp_token@hooks.example/h", "https://***@hooks.example/h",
     "https://***@hooks.example/h"),
    ("https://@hooks.example/h", "https://@hooks.example/h", "https://@hooks.example/h"),
    ("https://mirror.example/m?token=abc", "https://mirror.example/m?token=abc",
     "https://mirror.example/m?***"),
    # Spliced: the rest reads as given (case, params, a "?" inside the fragment).
    ("HTTPS://U:P@Mirror.example/a;v=1?sig=9#f?x", "HTTPS://U:***@Mirror.example/a;v=1?sig=9#f?x",
     "HTTPS://U:***@Mirror.example/a;v=1?***#f?x"),
    ("https://u:p@h:99999/x", "https://u:***@h:99999/x", "https://u:***@h:99999/x"),
    # No netloc, a "//" in the query: not spliced in the wrong place.
    ("file?a//b", "file?a//b", "file?***"),
    # Characters urlsplit drops: rebuilt from the parts, the secret still hidden.
    ("http://a:pw\nx@host/p?to\tken=1", "http://a:***@host/p?token=1", "http://a:***@host/p?***"),
    # Unparseable: hidden whole when it may hold a secret, else shown as given.
    ("http://alice:s3cret@[::1/h", UNREADABLE, UNREADABLE),
    ("http://[::1/h?token=abc", "http://[::1/h?token=abc", UNREADABLE),
    ("http://[::1/h", "http://[::1/h", "http://[::1/h"),
]


@pytest.mark.parametrize(("url", "password_masked", "query_masked"), CASES)
def test_a_url_s_password_and_query_are_shown_as_stars(
        url: str, password_masked: str, query_masked: str) -> None:
    assert masked_url(url) == password_masked
    assert masked_url(url, query=True) == query_masked


@pytest.mark.parametrize(("url", "password_masked", "query_masked"), CASES)
def test_the_webhooks_the_catalog_and_the_log_shipper_show_urls_through_it(
        url: str, password_masked: str, query_masked: str) -> None:
    """Tried: each URL above through the three places that show one. Before, each had its
    own copy: the log shipper's raised ValueError on an unparseable URL, the catalog's
    rebuilt the URL (an empty "?" dropped, the scheme lowercased)."""
    assert shown_url(url) == without_password(url) == password_masked
    assert redacted_url(url) == query_masked
