"""Package-internal helpers with no ntkdyn dependencies (the bottom layer).

Every ntkdyn module may import from here; nothing here imports the rest of ntkdyn.
"""
