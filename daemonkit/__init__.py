"""The standard-library-only kit shared by halab's two daemons (balancer, heartbeat).

One job a module: ``errors`` (one-line user errors), ``config`` (TOML reader with
errors naming file, key and reason), ``log`` (logfmt event log), ``sdnotify``
(systemd's notify protocol), ``cli`` (the daemon's command line, event loop and
reload), ``control`` (the unix control socket: server and client), ``check`` (the TCP
check), ``risefall`` (rise/fall counting of consecutive results, sans-IO).

It imports nothing of halab's: a daemon runs on any host with only its own config.
"""
