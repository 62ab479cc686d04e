# Connects to a port the test listens on (127.0.0.1:__PORT__) and sends a line.
import socket

with socket.create_connection(("127.0.0.1", __PORT__), timeout=3) as s:
    s.sendall(b"hello from the sandbox\n")
print("connected")
