"""The ``halab`` command: up, down, status, provision, exec... (``cli``), and the lab's
status table (``status``). It sits above everything else: provision, the backends,
the harness and the topology."""
