"""halab heartbeat: moves the VIP between the directors when one dies or steps down."""
