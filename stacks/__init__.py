"""The stacks halab can run on its directors instead of its own daemons, one folder each.

A stack is a folder: ``stack.toml`` (its manifest: the Debian packages it needs, the
files it writes from its templates, the services it runs, and the hints the proof
suite reads: where a server's state is, how to step down) and the Jinja2 templates it
names, filled with the topology's values (``provision.stack`` says which). The folders
here are the seed's own stacks and the common modern ones; a student's own folder,
given by its path (``halab up --stack ./mine``), is loaded the same way.
"""
