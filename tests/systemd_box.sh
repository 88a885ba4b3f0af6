#!/bin/sh
# The mount work of tests/systemd_box.py: boots systemd as PID 1 of a throw-away container.
#
#   sh tests/systemd_box.sh outer RUN CGROUP...   (run by systemd_box.py, under `timeout`)
#
# outer: joins the run's own cgroups (so that the container's cgroup namespace is rooted
#        there and teardown finds every process), then makes the new namespaces (pid, mount,
#        uts, ipc, net: loopback only, cgroup) and runs `inner` as their PID 1.
# inner: builds the root: an overlay whose lower layer is a NON-recursive bind of the host's
#        "/" and whose upper layer is a tmpfs, so nothing written inside reaches the host's
#        disk; private /proc (with /proc/sys read-only but for net), read-only /sys, cgroup2,
#        /run, /tmp, a small /dev; RUN/etc-system as /etc/systemd/system (rw, holding a
#        minimal default target so no host service starts), RUN/opt as /opt/box (ro),
#        RUN/machine-id as /etc/machine-id. Then pivot_root, mark / shared as a systemd host
#        does at boot (LoadCredential= mounts need it), and exec /lib/systemd/systemd with
#        systemd-nspawn's default capability bounding set.
# Every mount lives in the container's private mount namespace: it goes when the container
# does. Needs root and util-linux (unshare, setpriv, mount, pivot_root).
set -eu

case $1 in
outer)
    run=$2
    shift 2
    for cgroup in "$@"; do echo $$ >"$cgroup/cgroup.procs"; done
    exec unshare --pid --fork --kill-child --mount --uts --ipc --net --cgroup \
        --propagation private -- sh "$0" inner "$run"
    ;;
inner) run=$2 ;;
*) echo "usage: $0 outer RUN CGROUP... (run by tests/systemd_box.py)" >&2; exit 2 ;;
esac

root=$run/root
mount -n --bind / "$run/lower"
mount -n -t tmpfs -o mode=0755,size=1g box-upper "$run/upper"
mkdir "$run/upper/data" "$run/upper/work"
mount -n -t overlay box-root \
    -o "lowerdir=$run/lower,upperdir=$run/upper/data,workdir=$run/upper/work" "$root"

mount -n -t proc proc "$root/proc"
# As systemd-nspawn: /proc/sys read-only (the container's systemd-sysctl would otherwise
# write host-wide settings), but for /proc/sys/net, which belongs to the private netns.
mount -n --bind "$root/proc/sys/net" "$root/proc/sys/net"
mount -n --rbind "$root/proc/sys" "$root/proc/sys"
mount -n -o remount,bind,ro "$root/proc/sys"
if [ -e "$root/proc/sysrq-trigger" ]; then
    mount -n --bind -o ro "$root/proc/sysrq-trigger" "$root/proc/sysrq-trigger"
fi
mount -n -t sysfs -o ro sysfs "$root/sys"              # read-only: udev and friends stay off
mount -n -t cgroup2 cgroup2 "$root/sys/fs/cgroup"       # rooted at the run's cgroup
mount -n -t tmpfs -o mode=0755,size=256m tmpfs "$root/run"
mount -n -t tmpfs -o mode=1777 tmpfs "$root/tmp"

mount -n -t tmpfs -o mode=0755,size=4m dev "$root/dev"  # no host devtmpfs inside
for name in null zero full random urandom tty; do
    touch "$root/dev/$name"
    mount -n --bind "/dev/$name" "$root/dev/$name"
done
touch "$root/dev/console"
mount -n --bind /dev/null "$root/dev/console"
mkdir "$root/dev/pts" "$root/dev/shm" "$root/dev/mqueue"
mount -n -t devpts -o newinstance,ptmxmode=0666,mode=620 devpts "$root/dev/pts"
ln -s pts/ptmx "$root/dev/ptmx"
mount -n -t tmpfs -o mode=1777 shm "$root/dev/shm"
ln -s /proc/self/fd "$root/dev/fd"
ln -s /proc/self/fd/0 "$root/dev/stdin"
ln -s /proc/self/fd/1 "$root/dev/stdout"
ln -s /proc/self/fd/2 "$root/dev/stderr"

mount -n --bind "$run/etc-system" "$root/etc/systemd/system"
mkdir -p "$root/opt/box"
mount -n --bind -o ro "$run/opt" "$root/opt/box"
mount -n --bind -o ro "$run/machine-id" "$root/etc/machine-id"

mkdir -p "$root/.oldroot"
cd "$root"
pivot_root . .oldroot
umount -l /.oldroot
rmdir /.oldroot
mount --make-rshared /

exec setpriv --bounding-set -all,+audit_control,+audit_write,+chown,+dac_override,+dac_read_search,+fowner,+fsetid,+ipc_owner,+kill,+lease,+linux_immutable,+mknod,+net_bind_service,+net_broadcast,+net_raw,+net_admin,+setfcap,+setgid,+setpcap,+setuid,+sys_admin,+sys_boot,+sys_chroot,+sys_nice,+sys_ptrace,+sys_resource,+sys_tty_config \
    -- env -i container=other TERM=dumb /lib/systemd/systemd
