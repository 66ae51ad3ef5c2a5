#!/bin/bash
# Turn sysusers.d files into the %pre shell lines Fedora's sysusers.generate-pre.sh makes for rpm < 4.19:
# `g NAME [ID]` and `u NAME ID "GECOS" HOME SHELL` lines become groupadd/useradd calls guarded by getent.
# (Only the u and g types: enough for pdagent.sysusers. Anything else is an error, not silently skipped.)
set -euo pipefail

quote() { printf "'%s'" "${1//\'/\'\\\'\'}"; }

for file in "$@"; do
    while IFS= read -r line || [ -n "$line" ]; do
        [[ $line =~ ^[[:space:]]*(#|$) ]] && continue
        eval "fields=($line)"   # the sysusers.d format quotes GECOS like a shell word
        type=${fields[0]} name=${fields[1]} id=${fields[2]:--}
        gecos=${fields[3]:--} home=${fields[4]:--} shell=${fields[5]:--}
        [ "$shell" = - ] && shell=/sbin/nologin
        [ "$home" = - ] && home=/
        case $type in
            g)
                opts=(-r); [ "$id" != - ] && opts+=(-g "$id")
                echo "getent group $(quote "$name") >/dev/null || groupadd ${opts[*]} $(quote "$name") || :"
                ;;
            u)
                gopts=(-r); uopts=(-r)
                if [ "$id" != - ]; then gopts+=(-g "$id"); uopts+=(-u "$id"); fi
                echo "getent group $(quote "$name") >/dev/null || groupadd ${gopts[*]} $(quote "$name") || :"
                echo "getent passwd $(quote "$name") >/dev/null || useradd ${uopts[*]} -g $(quote "$name")" \
                     "-d $(quote "$home") -s $(quote "$shell") -c $(quote "$gecos") $(quote "$name") || :"
                ;;
            *)
                echo "sysusers-generate-pre.sh: $file: type $type is not supported here" >&2
                exit 1
                ;;
        esac
    done <"$file"
done
