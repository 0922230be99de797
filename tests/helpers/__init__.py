"""What the tests share, apart from the tests themselves.

- ``nni``: running real NNI experiments on loopback in a private network namespace (``run_experiment``,
  ``run_in_netns``, ``free_port``) and the shipped experiment shrunk for tests (``shipped_config``,
  ``tiny_config``);
- ``nni_driver``: the script that drives one experiment with nnictl and NNI's REST API, and stops
  (or kills by process id) everything it started;
- ``chromium_cdp`` and ``webui_charts``: headless Chromium over the DevTools protocol, for the web UI;
- ``pg_server``: a throw-away PostgreSQL server on 127.0.0.1;
- ``spaces``, ``retrain``: tiny spaces and a fake search directory;
- ``nni_toys/``: stand-in trials whose results are known in advance.
"""
