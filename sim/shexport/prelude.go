package shexport

// prelude is the part of every exported script that does not depend on the
// scenario: the helpers each step calls. Exported steps set the step's
// expectations (SL_X_*) and the simulator's device numbers (SL_SIMDEV),
// then call one sl_KIND function, which runs the step on this machine,
// checks it and prints its verdict (sl_end).
//
// Names: a scenario dm device NAME is "$P-NAME", the wrapper of a scenario
// disk NAME (a linear table over its loop device) is "$P+NAME", and a
// disk's all-error helper (the failing half of a fault table) is
// "$P+NAME+err". Output is put back in the simulator's form before it is
// checked: the devices of other users and the disks' wrappers are left out
// of listings, "$P-" is taken out of names, and device numbers become the
// simulator's (sl_devmap).
const prelude = `set -u
export LC_ALL=C DM_DISABLE_UDEV=1
export PATH="/usr/sbin:/usr/bin:/sbin:/bin${PATH:+:$PATH}"

SL_PASS=0 SL_FAIL=0 SL_DIFF=0 SL_STEPS=0
SL_TMP= SL_READY=0 SL_KSEQ=-1 SL_DMMAJ= SL_NOTE= SL_MSG= SL_SIM=ok SL_LINE=0 SL_TEXT=
SL_LOOPS=() SL_BGPIDS=() SL_FDS=() SL_LOGCUR=() SL_LOGSTEP=() SL_KNEW=()
declare -A SL_LOOP=() SL_REAL=() SL_SIMDEV=() SL_DEVMAP=() SL_HELD=() SL_OPEN=() SL_APID=() SL_AKIND=()

sl_die() { echo "snaplab export ($SL_NAME): $*" >&2; exit 2; }

[[ $P =~ ^[A-Za-z0-9_.:=@#-]{1,64}$ ]] || sl_die "prefix '$P' (from $SL_PREFIX_ENV): want 1 to 64 characters from A-Z a-z 0-9 _ . : = @ # -"

# sl_ours lists this script's dm devices: the scenario's ($P-NAME) first,
# then the disks' wrappers and helpers ($P+NAME...).
sl_ours() {
	local n pass
	for pass in - +; do
		while read -r n _; do
			[[ $n == "$P$pass"* ]] && printf '%s\n' "$n"
		done <<<"$(dmsetup info -c --noheadings -o name 2>/dev/null)"
	done
}

sl_cleanup() {
	local rc=$? n fd pid l round left
	trap - EXIT INT TERM HUP
	if ((SL_READY)); then
		# A suspended device holds queued I/O back: resume every device
		# of ours before waiting for the scenario's background I/O.
		for n in $(sl_ours); do dmsetup resume "$n" >/dev/null 2>&1; done
		for pid in "${SL_BGPIDS[@]}"; do kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; done
		for fd in "${SL_FDS[@]}"; do exec {fd}<&-; done
		for round in 1 2 3 4 5 6; do
			left=$(sl_ours)
			[[ -z $left ]] && break
			for n in $left; do
				dmsetup resume "$n" >/dev/null 2>&1
				dmsetup remove --force "$n" >/dev/null 2>&1
			done
		done
		for l in "${SL_LOOPS[@]}"; do losetup -d "$l" 2>/dev/null; done
		left=$(sl_ours)
		[[ -n $left ]] && echo "snaplab export ($SL_NAME): cleanup: dm devices left: $left" >&2
	fi
	[[ -n $SL_TMP ]] && rm -rf "$SL_TMP"
	exit "$rc"
}

sl_setup() {
	local t n
	[[ $(id -u) == 0 ]] || sl_die "run as root: the script makes loop and device-mapper devices"
	for t in dmsetup losetup dd sha256sum base64 truncate mktemp sync sleep stat grep rm; do
		command -v "$t" >/dev/null || sl_die "$t not found in PATH"
	done
	if command -v modprobe >/dev/null; then
		for t in loop dm-mod dm-snapshot dm-zero dm-delay; do modprobe -q "$t" 2>/dev/null; done
	fi
	dmsetup version >/dev/null 2>&1 || sl_die "dmsetup version failed: no device-mapper in this kernel?"
	for n in $(sl_ours); do
		sl_die "dm device $n exists already: another run of this script, or a clash with prefix $P (set $SL_PREFIX_ENV to another prefix)"
	done
	SL_TMP=$(mktemp -d "${TMPDIR:-/tmp}/snaplab-export.XXXXXX") || sl_die "mktemp -d failed"
	SL_READY=1
	sl_kmsg >/dev/null
	SL_LOGCUR=()
}

trap sl_cleanup EXIT
trap 'exit 130' INT TERM HUP

# sl_errno names the errno of an error message (strerror's text, as dd,
# sync and bash print it).
sl_errno() {
	case $1 in
	*"Input/output error"*) echo EIO ;;
	*"No space left on device"*) echo ENOSPC ;;
	*"Invalid argument"*) echo EINVAL ;;
	*"Operation not permitted"*) echo EPERM ;;
	*"No such device or address"*) echo ENXIO ;;
	*"No such device"*) echo ENODEV ;;
	*"No such file or directory"*) echo ENOENT ;;
	*"Cannot allocate memory"*) echo ENOMEM ;;
	*"Device or resource busy"*) echo EBUSY ;;
	*"Read-only file system"*) echo EROFS ;;
	*"Resource temporarily unavailable"*) echo EAGAIN ;;
	*"No such file or directory"*) echo ENOENT ;;
	*"Bad file descriptor"*) echo EBADF ;;
	*) echo "EUNKNOWN(${1//$'\n'/ })" ;;
	esac
}

# sl_kmsg reads the kernel log records after the last one read into
# SL_KNEW (their messages) and returns how many.
sl_kmsg() {
	local rec hdr seq
	SL_KNEW=()
	while IFS= read -r rec; do
		[[ $rec == " "* || $rec != *";"* ]] && continue
		hdr=${rec%%;*}
		seq=${hdr#*,}
		seq=${seq%%,*}
		[[ $seq =~ ^[0-9]+$ ]] || continue
		((seq > SL_KSEQ)) || continue
		SL_KSEQ=$seq
		SL_KNEW+=("${rec#*;}")
	done <<<"$(dd if=/dev/kmsg iflag=nonblock bs=65536 status=none 2>/dev/null)"
	return 0
}

# sl_realmap learns the device numbers of this script's dm devices
# (SL_REAL: dm name -> MAJ:MIN) and the simulator's number for each
# (SL_DEVMAP: real MAJ:MIN -> the simulator's), for the step's devices
# (SL_SIMDEV: scenario name -> simulator's MAJ:MIN; a disk as +NAME).
# $1: stderr of the step, whose "on NAME (MAJ:MIN)" names a device that
# may be gone already (a failed create).
sl_realmap() {
	local n ma mi k r s=${1:-}
	SL_REAL=()
	while read -r n ma mi; do
		[[ $ma =~ ^[0-9]+$ && $mi =~ ^[0-9]+$ ]] && SL_REAL[$n]=$ma:$mi
	done <<<"$(dmsetup info -c --noheadings -o name,major,minor --separator ' ' 2>/dev/null)"
	while [[ $s =~ " on "([^ ]+)" ("([0-9]+:[0-9]+)")" ]]; do
		[[ -z ${SL_REAL[${BASH_REMATCH[1]}]:-} ]] && SL_REAL[${BASH_REMATCH[1]}]=${BASH_REMATCH[2]}
		s=${s#*"${BASH_REMATCH[0]}"}
	done
	SL_DEVMAP=()
	for k in "${!SL_SIMDEV[@]}"; do
		if [[ $k == +* ]]; then r=${SL_REAL[$P$k]:-}; else r=${SL_REAL[$P-$k]:-}; fi
		[[ -n $r ]] && SL_DEVMAP[$r]=${SL_SIMDEV[$k]}
	done
}

# sl_devmap puts text in the simulator's form (SL_OUTT): device numbers
# of this script's devices become the simulator's ("253:7" -> "253:0", as
# in "table: 253:7: ..."; "Major, minor:      253, 7" -> "253, 0"; a
# number after a colon, as in "1:253:7", stays), and "$P-" goes from names.
sl_devmap() {
	local s=$1 out= pre m k
	while [[ $s =~ ([0-9]+):([0-9]+) ]]; do
		m=${BASH_REMATCH[0]}
		pre=${s%%"$m"*}
		s=${s#"$pre$m"}
		if [[ -n ${SL_DEVMAP[$m]:-} && ${pre: -1} != ":" ]]; then
			m=${SL_DEVMAP[$m]}
		fi
		out+=$pre$m
	done
	s=$out$s
	out=
	while [[ $s =~ "Major, minor:"( +)([0-9]+)", "([0-9]+) ]]; do
		m=${BASH_REMATCH[0]}
		pre=${s%%"$m"*}
		s=${s#"$pre$m"}
		k=${SL_DEVMAP[${BASH_REMATCH[2]}:${BASH_REMATCH[3]}]:-}
		[[ -n $k ]] && m="Major, minor:${BASH_REMATCH[1]}${k%%:*}, ${k#*:}"
		out+=$pre$m
	done
	s=$out$s
	SL_OUTT=${s//"$P-"/}
}

# sl_kname is the scenario's name for a kernel device name: dm-N of one of
# this script's devices, or the loop device of a disk.
sl_kname() {
	local k n
	if [[ $1 == dm-* && -n $SL_DMMAJ ]]; then
		for n in "${!SL_REAL[@]}"; do
			[[ ${SL_REAL[$n]} == "$SL_DMMAJ:${1#dm-}" ]] || continue
			case $n in
			"$P-"*) echo "${n#"$P-"}"; return ;;
			"$P+"*) n=${n#"$P+"}; echo "${n%+err}"; return ;;
			esac
		done
	fi
	for k in "${!SL_LOOP[@]}"; do
		[[ ${SL_LOOP[$k]} == "/dev/$1" ]] && { echo "$k"; return; }
	done
	echo "$1"
}

# sl_steplog reads what the kernel logged during the step, in the normal
# form scenarios check (scenarios/README.md, "Faults and the kernel log"),
# into SL_LOGSTEP, and adds it to the lines of the next log step.
sl_steplog() {
	local m re='^(.+ error), dev ([^,]+), sector ([0-9]+) op (0x[0-9a-f]+:\([A-Z_]+\))( flags .*)?$'
	sl_kmsg
	SL_LOGSTEP=()
	for m in "${SL_KNEW[@]}"; do
		[[ -n ${SNAPLAB_DEBUG:-} ]] && printf 'line %s: kernel: %s\n' "$SL_LINE" "$m" >&2
		case $m in
		"device-mapper: "*) sl_devmap "$m"; m=$SL_OUTT ;;
		"Buffer I/O error on dev "*)
			local d=${m#Buffer I/O error on dev }
			m="Buffer I/O error on dev $(sl_kname "${d%%,*}"), ${d#*, }" ;;
		*)
			[[ $m =~ $re ]] || continue
			m="${BASH_REMATCH[1]}, dev $(sl_kname "${BASH_REMATCH[2]}"), sector ${BASH_REMATCH[3]} op ${BASH_REMATCH[4]}" ;;
		esac
		SL_LOGSTEP+=("$m")
		SL_LOGCUR+=("$m")
	done
}

# sl_begin starts a step: its line, text and the simulator's verdict
# ("ok" or why it failed there); the expectations are reset.
sl_begin() {
	SL_LINE=$1 SL_TEXT=$2 SL_SIM=$3
	SL_X_STDOUT= SL_X_HAS_STDOUT=0 SL_X_EXIT= SL_X_ERRNO= SL_X_DATA= SL_X_NOLOG=0 SL_SIMHASH=
	SL_X_MATCH=() SL_X_LINES=() SL_X_STDERR=() SL_X_LOG=()
	SL_SIMDEV=()
	SL_MSG= SL_NOTE=
}

# sl_blocklog reports whether a kernel line is the block layer's error for
# a request to a scenario disk: the simulator logs it for every request a
# fault rule fails, but here a fault is a dm table above the loop device,
# so the block layer never sees the request fail.
sl_blocklog() {
	local d
	[[ $1 =~ ^I/O\ error,\ dev\ ([^,]+), ]] || return 1
	d=${BASH_REMATCH[1]}
	[[ -n ${SL_LOOP[$d]:-} ]]
}

# sl_wantlines checks that every wanted line (after --) is among the got
# lines (before --); WHAT names them. Sets SL_MSG on a miss.
sl_wantlines() {
	local what=$1 w g found
	shift
	local -a got=()
	while (($#)) && [[ $1 != -- ]]; do got+=("$1"); shift; done
	shift
	for w in "$@"; do
		if [[ $what == "kernel log" ]] && sl_blocklog "$w"; then
			SL_NOTE+="${SL_NOTE:+; }not checked: \"$w\" (the fault is a dm table above the loop device; the block layer logs nothing)"
			continue
		fi
		found=0
		for g in "${got[@]}"; do [[ $g == "$w" ]] && { found=1; break; }; done
		if ((!found)); then
			if ((${#got[@]} == 0)); then
				SL_MSG="$what: want line \"$w\", got nothing"
			else
				local IFS='|'
				SL_MSG="$what: want line \"$w\", got: ${got[*]}"
			fi
			return 1
		fi
	done
	return 0
}

# sl_end checks the kernel lines the step expects (log=) and prints the
# verdict.
sl_end() {
	SL_NOTE=${SL_NOTE:-}
	if [[ -z $SL_MSG && ${#SL_X_LOG[@]} -gt 0 ]]; then
		sl_wantlines "kernel log" "${SL_LOGSTEP[@]}" -- "${SL_X_LOG[@]}"
	fi
	sl_verdict
}

sl_verdict() {
	local extra=
	((SL_STEPS++))
	if [[ $SL_SIM != ok && -n $SL_MSG ]]; then
		extra="; the simulator failed this step too: $SL_SIM"
	elif [[ $SL_SIM != ok ]]; then
		extra="the simulator failed this step: $SL_SIM"
		((SL_DIFF++))
	elif [[ -n $SL_MSG ]]; then
		extra="; the simulator passed this step"
		((SL_DIFF++))
	fi
	[[ -n $SL_NOTE ]] && extra+="${extra:+; }$SL_NOTE"
	if [[ -z $SL_MSG ]]; then
		((SL_PASS++))
		echo "PASS line $SL_LINE: $SL_TEXT${extra:+ ($extra)}"
	else
		((SL_FAIL++))
		echo "FAIL line $SL_LINE: $SL_TEXT ($SL_MSG$extra)"
	fi
	SL_NOTE=
}

sl_summary() {
	echo "snaplab export: $SL_NAME: $SL_STEPS steps, $SL_PASS passed, $SL_FAIL failed; $SL_DIFF differ from the simulator's verdict"
	((SL_FAIL == 0))
}

# sl_disk NAME BYTES LBS: a sparse file on a loop device, wrapped in a
# linear dm device $P+NAME; with FAULTS=1 also an all-error device of the
# same size, $P+NAME+err, for fault tables.
sl_disk() {
	local name=$1 bytes=$2 lbs=$3 faults=$4 loop err
	local sectors=$((bytes / 512))
	if ! truncate -s "$bytes" "$SL_TMP/$name.img" 2>"$SL_TMP/err"; then
		SL_MSG="truncate: $(<"$SL_TMP/err")"
	elif ! loop=$(losetup -f --show --sector-size "$lbs" "$SL_TMP/$name.img" 2>"$SL_TMP/err"); then
		SL_MSG="losetup: $(<"$SL_TMP/err")"
	else
		SL_LOOPS+=("$loop")
		SL_LOOP[$name]=$loop
		if ! err=$(dmsetup create "$P+$name" --table "0 $sectors linear $loop 0" 2>&1); then
			SL_MSG="dmsetup create $P+$name: $err"
		elif ((faults)) && ! err=$(dmsetup create "$P+$name+err" --table "0 $sectors error" 2>&1); then
			SL_MSG="dmsetup create $P+$name+err: $err"
		fi
	fi
	if [[ -z $SL_DMMAJ ]]; then
		SL_DMMAJ=$(dmsetup info -c --noheadings -o major "$P+$name" 2>/dev/null)
		SL_DMMAJ=${SL_DMMAJ//[^0-9]/}
	fi
	sl_realmap
	sl_steplog
	SL_X_LOG=()
	sl_verdict
}

# sl_fault DISK TABLE: the disk's wrapper gets TABLE (linear, error and
# delay segments), as lvm2's test helpers swap tables to fail a range.
sl_fault() {
	local out
	if ! out=$(dmsetup load "$P+$1" --table "$2" 2>&1); then
		SL_MSG="dmsetup load $P+$1: $out"
	elif ! out=$(dmsetup resume "$P+$1" 2>&1); then
		SL_MSG="dmsetup resume $P+$1: $out"
	fi
	sl_steplog
	sl_verdict
}

# sl_filter KIND: keep the listing's lines (or info blocks) of the
# scenario's devices only, as the simulator lists them; "No devices found"
# when none is left.
sl_filter() {
	local kind=$1 text=$2 l out= block= keep=0
	case $kind in
	none) SL_OUTT=$text; return ;;
	blocks)
		while IFS= read -r l; do
			if [[ -z $l ]]; then
				((keep)) && out+=$block$'\n'
				block= keep=0
				continue
			fi
			[[ $l == "Name:"*" $P-"* ]] && keep=1
			block+=$l$'\n'
		done <<<"$text"
		((keep)) && out+=$block$'\n'
		out=${out%$'\n'} ;;
	lines)
		while IFS= read -r l; do
			[[ $l == "$P-"* ]] && out+=$l$'\n'
		done <<<"$text"
		out=${out%$'\n'} ;;
	esac
	[[ -z $out ]] && out="No devices found"
	SL_OUTT=$out
}

# sl_dmsetup KIND ARGS...: real dmsetup; its output in the simulator's
# form is checked against the step's expectations.
sl_dmsetup() {
	local kind=$1 out rc err re w
	shift
	out=$(dmsetup "$@" 2>"$SL_TMP/err"; rc=$?; printf x; exit "$rc")
	rc=$?
	out=${out%x}
	out=${out%$'\n'}
	err=$(<"$SL_TMP/err")
	sl_realmap "$err"
	[[ $kind != none && $rc == 0 ]] && { sl_filter "$kind" "$out"; out=$SL_OUTT; }
	sl_devmap "$out"
	out=$SL_OUTT
	sl_devmap "$err"
	err=$SL_OUTT
	sl_steplog
	if [[ -n $SL_X_EXIT && $rc != "$SL_X_EXIT" ]]; then
		SL_MSG="exit status $rc, want $SL_X_EXIT (stderr: ${err//$'\n'/ | })"
	elif [[ -z $SL_X_EXIT && $rc != 0 && ${#SL_X_STDERR[@]} -eq 0 ]]; then
		SL_MSG="dmsetup failed (exit $rc): ${err//$'\n'/ | }"
	elif ((SL_X_HAS_STDOUT)) && [[ $out != "$SL_X_STDOUT" ]]; then
		SL_MSG="stdout $(printf %q "$out"), want $(printf %q "$SL_X_STDOUT")"
	fi
	if [[ -z $SL_MSG ]]; then
		for re in "${SL_X_MATCH[@]}"; do
			if ! printf '%s' "$out" | grep -qzP "(?m)$re"; then
				SL_MSG="stdout $(printf %q "$out") does not match expect~=\"$re\""
				break
			fi
		done
	fi
	if [[ -z $SL_MSG && ${#SL_X_LINES[@]} -gt 0 ]]; then
		local -a lines=()
		mapfile -t lines <<<"$out"
		sl_wantlines stdout "${lines[@]}" -- "${SL_X_LINES[@]}"
	fi
	if [[ -z $SL_MSG && ${#SL_X_STDERR[@]} -gt 0 ]]; then
		local -a elines=()
		mapfile -t elines <<<"$err"
		sl_wantlines stderr "${elines[@]}" -- "${SL_X_STDERR[@]}"
	fi
	sl_end
}

# sl_io OP PATH OFF LEN SRC MODE: one I/O as the scenario's agent does it:
# dd with O_DIRECT (MODE direct; fua adds O_DSYNC; buffered goes through
# the page cache), a read into SRC. Sets SL_ERRNO (and SL_HASH, the first
# 16 hex digits of a read's SHA-256).
sl_io() {
	local op=$1 path=$2 off=$3 len=$4 src=$5 mode=$6 flags e got
	SL_ERRNO=OK SL_HASH=
	case $op in
	write)
		case $mode in
		direct) flags=oflag=direct,seek_bytes ;;
		fua) flags=oflag=direct,dsync,seek_bytes ;;
		buffered) flags=oflag=seek_bytes ;;
		esac
		if ! dd if="$src" of="$path" bs="$len" count=1 seek="$off" "$flags" conv=notrunc status=none 2>"$src.err"; then
			SL_ERRNO=$(sl_errno "$(<"$src.err")")
		fi ;;
	read)
		rm -f "$src"
		if ! dd if="$path" of="$src" bs="$len" count=1 skip="$off" iflag=direct,skip_bytes,fullblock status=none 2>"$src.err"; then
			SL_ERRNO=$(sl_errno "$(<"$src.err")")
			return
		fi
		got=$(stat -c %s "$src" 2>/dev/null || echo 0)
		if ((got != len)); then
			# A read past the device's end: the guest agent's EINVAL.
			SL_ERRNO=EINVAL
			return
		fi
		e=$(sha256sum <"$src")
		SL_HASH=sha256:${e:0:16} ;;
	flush)
		# A new file's fsync on the device: REQ_PREFLUSH (and the write-back
		# of its dirty pages).
		if ! sync "$path" 2>"$src.err"; then
			SL_ERRNO=$(sl_errno "$(<"$src.err")")
		fi ;;
	discard)
		if ! blkdiscard -o "$off" -l "$len" "$path" 2>"$src.err"; then
			SL_ERRNO=$(sl_errno "$(<"$src.err")")
		fi ;;
	esac
}

# sl_iocheck checks an I/O's outcome (SL_ERRNO, SL_HASH) against the
# step's expectation: the errno (expect=ERRNO, else success), then the
# data, which must hash as what the simulator read (the simulator checked
# it against its oracle and expect=PATTERN).
sl_iocheck() {
	local kind=$1
	if [[ -n $SL_X_ERRNO && $SL_ERRNO != "$SL_X_ERRNO" ]]; then
		SL_MSG="$kind: got $SL_ERRNO, want $SL_X_ERRNO"
	elif [[ -z $SL_X_ERRNO && $SL_ERRNO != OK ]]; then
		SL_MSG="$kind failed: $SL_ERRNO"
	elif [[ $SL_ERRNO == OK && -n $SL_SIMHASH && $SL_HASH != "$SL_SIMHASH" ]]; then
		SL_MSG="data: ${SL_HASH:-nothing read}, the simulator read $SL_SIMHASH${SL_X_DATA:+ (pattern $SL_X_DATA)}"
	fi
}

# sl_hold DEV: the file a buffered write goes through stays open until the
# script ends (as the simulator's page cache model holds it), so the
# pages are not written back at dd's close.
sl_hold() {
	local fd
	[[ -n ${SL_HELD[$1]:-} ]] && return 0
	if { exec {fd}<>"$1"; } 2>"$SL_TMP/err"; then
		SL_HELD[$1]=$fd
		SL_FDS+=("$fd")
		return 0
	fi
	SL_ERRNO=$(sl_errno "$(<"$SL_TMP/err")")
	return 1
}

# sl_iostep OP PATH OFF LEN SRC MODE ASYNC: an I/O step; with ASYNC it runs
# in the background until its wait step, and gets a moment to be under way
# (the kernel executor waits up to 300 ms for it to reach a disk).
sl_iostep() {
	local op=$1 path=$2 off=$3 len=$4 src=$5 mode=$6 id=$7 out
	if [[ $mode == buffered ]] && ! sl_hold "$path"; then
		sl_iocheck "$op"
		sl_steplog
		sl_end
		return
	fi
	if [[ -n $id ]]; then
		out=$SL_TMP/async-$id
		[[ $op == read ]] && src=$out.data
		(sl_io "$op" "$path" "$off" "$len" "$src" "$mode"; printf '%s %s\n' "$SL_ERRNO" "$SL_HASH" >"$out") &
		SL_APID[$id]=$!
		SL_AKIND[$id]=$op
		SL_BGPIDS+=("$!")
		sleep 0.3
		sl_verdict
		return
	fi
	[[ $op == read ]] && src=$SL_TMP/read.data
	sl_io "$op" "$path" "$off" "$len" "$src" "$mode"
	sl_iocheck "$op"
	sl_steplog
	sl_end
}

# sl_wait ID: wait for the asynchronous I/O ID and check it.
sl_wait() {
	local id=$1 r
	wait "${SL_APID[$id]}"
	r=$(<"$SL_TMP/async-$id") || r="EUNKNOWN(no result)"
	SL_ERRNO=${r%% *} SL_HASH=${r#* }
	sl_iocheck "${SL_AKIND[$id]}"
	sl_steplog
	sl_end
}

# sl_fsync DEV: write back DEV's dirty pages and report their error. The
# simulator fsyncs the file its buffered writes went through; a shell
# cannot fsync a descriptor, so this fsyncs a new file on DEV (coreutils'
# sync FILE), which sees the same unreported write-back error (errseq).
sl_fsync() {
	sl_io flush "$1" 0 0 "$SL_TMP/fsync" direct
	sl_iocheck fsync
	sl_steplog
	sl_end
}

sl_sync() {
	sync
	sl_steplog
	sl_end
}

# sl_open PATH ID: hold PATH open read-only until close ID.
sl_open() {
	local fd e=OK
	if { exec {fd}<"$1"; } 2>"$SL_TMP/err"; then
		SL_OPEN[$2]=$fd
		SL_FDS+=("$fd")
	else
		e=$(sl_errno "$(<"$SL_TMP/err")")
	fi
	if [[ -n $SL_X_ERRNO && $e != "$SL_X_ERRNO" ]]; then
		SL_MSG="open: got $e, want $SL_X_ERRNO"
	elif [[ -z $SL_X_ERRNO && $e != OK ]]; then
		SL_MSG="open failed: $e"
	fi
	sl_steplog
	sl_verdict
}

sl_close() {
	local fd=${SL_OPEN[$1]:-}
	if [[ -z $fd ]]; then
		SL_MSG="close: $1 is not open (its open failed)"
	else
		exec {fd}<&-
		unset "SL_OPEN[$1]"
	fi
	sl_steplog
	sl_verdict
}

sl_log() {
	sl_steplog
	if ((SL_X_NOLOG)) && ((${#SL_LOGCUR[@]} > 0)); then
		local IFS='|'
		SL_MSG="kernel log: want nothing new, got: ${SL_LOGCUR[*]}"
	else
		sl_wantlines "kernel log" "${SL_LOGCUR[@]}" -- "${SL_X_LOG[@]}"
	fi
	SL_LOGCUR=()
	sl_verdict
}

# sl_status prints dmsetup status and the event numbers of this script's
# scenario devices.
sl_status() {
	local n
	for n in $(sl_ours); do
		[[ $n == "$P-"* ]] || continue
		printf '%s: %s | %s\n' "$n" "$(dmsetup status "$n" 2>&1)" "$(dmsetup info -c --noheadings -o events "$n" 2>&1)"
	done
}

# sl_run lets everything in flight finish, as the kernel executor does:
# until no snapshot-merge is still merging, and dmsetup status and the
# event numbers read the same twice in a row, 50 ms apart (20 s at most).
sl_run() {
	local last= now i f
	for ((i = 0; i < 400; i++)); do
		now=$(sl_status)
		local merging=0
		while read -r _ f; do
			local -a w=($f)
			[[ ${w[2]:-} == snapshot-merge && ${w[3]:-} == */* && ${w[3]%/*} != "${w[4]:-}" ]] && merging=1
		done <<<"$now"
		if ((!merging)) && [[ $now == "$last" ]]; then
			sl_steplog
			sl_verdict
			return
		fi
		last=$now
		sleep 0.05
	done
	SL_MSG="run: the devices' status did not settle in 20 s: ${now//$'\n'/ | }"
	sl_steplog
	sl_verdict
}
`
