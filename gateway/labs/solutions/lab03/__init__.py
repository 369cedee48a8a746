"""Lab 3's reference solution: real captures, the key log, and the answers read from them
(``make_captures.py`` makes all four against a running sandbox)."""
