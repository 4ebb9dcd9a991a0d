# Shell functions shared by the scripts in this folder: sourced (`. scripts/lib.sh`), not run.
# Messages go to stderr, so that scripts/services can print only its `export` lines on stdout.

# A progress line.
say() { printf '== %s\n' "$*" >&2; }

# Runs a command as root: directly when we are root (CI containers have no sudo), else via sudo.
as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# Installs Debian packages, quietly.
apt_install() {
  say "installing $*"
  as_root apt-get update -qq >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
}

# Installs the Debian package (default: the command's name) unless the command exists.
need() {
  command -v "$1" >/dev/null || apt_install "${2:-$1}"
}

# True when something accepts TCP connections on 127.0.0.1:<port>.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Waits for 127.0.0.1:<port>, checking every half second, <tries> times.
wait_port() {
  for _ in $(seq 1 "$2"); do port_open "$1" && return 0; sleep 0.5; done
  return 1
}
