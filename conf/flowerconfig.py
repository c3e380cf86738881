"""Flower options for ``emp monitor --conf=conf/flowerconfig.py`` (Flower's own config file).

Every Flower option works here, on the command line (``--name=value``) or as
``FLOWER_<NAME>``; the monitor's own pages, JSON and actions follow the same
authentication and ``read_only`` as Flower's pages.
"""

port = 3333
address = "127.0.0.1"

# HTTP basic authentication: one or more "user:password".
# basic_auth = ["ops:change-me"]

# Or OAuth2 (Google, GitHub, GitLab, Okta): a regex of the emails let in.
# auth = r".*@example\.com"
# auth_provider = "flower.views.auth.GithubLoginHandler"
# oauth2_key = "..."; oauth2_secret = "..."; oauth2_redirect_uri = "http://host:3333/login"

# Watch only: cancel, retry, requeue, submit and webhook reconnect answer 403.
# read_only = True

# Serve under a path behind a reverse proxy: http://host/monitor/
# url_prefix = "monitor"
