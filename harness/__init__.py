"""What the suite, the benchmarks and the ``halab`` command use to break a lab and watch
it: ``faults`` (power loss, link cuts... and their undoing), ``traffic`` (the probe
run on a host, client loops, the VIP sampler), ``timeline`` (events and requests on one
time axis, drawn with matplotlib when it is installed), ``poll`` (wait for a condition
with a deadline). It drives a lab only through the backend interface (``lab.backend``).
"""
