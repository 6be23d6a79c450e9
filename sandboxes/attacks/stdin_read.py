# Attack 6, stdin_read: read stdin with no input (EOF, not a hang).
import sys
print(repr(sys.stdin.read()))
