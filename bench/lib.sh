# Helpers shared by the bench scripts (sourced, not run).

# A free loopback port: `free_port` (TCP) or `free_port SOCK_DGRAM` (UDP).
free_port() {
  python3 -c 'import socket,sys; s=socket.socket(socket.AF_INET, getattr(socket, sys.argv[1])); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' "${1:-SOCK_STREAM}"
}

# 32 random bytes as hex: a secret or an API key for a gateway of the run's own.
random_hex() {
  head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n'
}
