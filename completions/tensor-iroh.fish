# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_tensor_iroh_global_optspecs
    string join \n v/verbose q/quiet color= h/help V/version
end

function __fish_tensor_iroh_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_tensor_iroh_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_tensor_iroh_using_subcommand
    set -l cmd (__fish_tensor_iroh_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c tensor-iroh -n "__fish_tensor_iroh_needs_command" -l color -d 'When to colour stderr (NO_COLOR turns `auto` off)' -r -f -a "auto\t''
always\t''
never\t''"
complete -c tensor-iroh -n "__fish_tensor_iroh_needs_command" -s v -l verbose -d 'More log output on stderr (-v: info, -vv: debug, including iroh\'s)'
complete -c tensor-iroh -n "__fish_tensor_iroh_needs_command" -s q -l quiet -d 'Only errors and warnings on stderr; no progress bars'
complete -c tensor-iroh -n "__fish_tensor_iroh_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c tensor-iroh -n "__fish_tensor_iroh_needs_command" -s V -l version -d 'Print version'
complete -c tensor-iroh -n "__fish_tensor_iroh_needs_command" -f -a "listen" -d 'Print a ticket and receive files from `send` (and serve files to `pull`)'
complete -c tensor-iroh -n "__fish_tensor_iroh_needs_command" -f -a "send" -d 'Send .npy/.safetensors files (or directories of them) to listeners'
complete -c tensor-iroh -n "__fish_tensor_iroh_needs_command" -f -a "pull" -d 'Fetch files or tensors from a listener started with --serve'
complete -c tensor-iroh -n "__fish_tensor_iroh_needs_command" -f -a "bench" -d 'Measure latency and throughput against a listener (or one in this process)'
complete -c tensor-iroh -n "__fish_tensor_iroh_needs_command" -f -a "id" -d 'Print the endpoint id of a key (creating the key file when missing)'
complete -c tensor-iroh -n "__fish_tensor_iroh_needs_command" -f -a "completions" -d 'Print a completion script for a shell'
complete -c tensor-iroh -n "__fish_tensor_iroh_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c tensor-iroh -n "__fish_tensor_iroh_using_subcommand listen" -l out -d 'Directory for received files [default: the current directory; with --serve, uploads are refused unless given]' -r -F
complete -c tensor-iroh -n "__fish_tensor_iroh_using_subcommand listen" -l serve -d 'Serve these .npy/.safetensors files, or the ones in these directories, to `pull`' -r -F
complete -c tensor-iroh -n "__fish_tensor_iroh_using_subcommand listen" -l allow -d 'Admit only this endpoint id (repeatable); anyone with the ticket otherwise' -r
complete -c tensor-iroh -n "__fish_tensor_iroh_using_subcommand listen" -l bind -d 'Local UDP address to bind, e.g. 0.0.0.0:4433 [default: any; with a lasting key (--key, IROH_SECRET) a port derived from it, so the ticket survives restarts]' -r
complete -c tensor-iroh -n "__fish_tensor_iroh_using_subcommand listen" -l relay -d 'Relay servers: `default` (iroh\'s public relays), `disabled`, or a relay URL' -r
complete -c tensor-iroh -n "__fish_tensor_iroh_using_subcommand listen" -l key -d 'Secret key file (64 hex characters), created with mode 0600 when missing; without it, IROH_SECRET or a fresh key' -r -F
complete -c tensor-iroh -n "__fish_tensor_iroh_using_subcommand listen" -l congestion -d 'Congestion controller: `auto` is BBR on paths of 4 ms or more (it holds its rate through random loss) and CUBIC on shorter ones; `bbr` or `cubic` everywhere' -r
complete -c tensor-iroh -n "__fish_tensor_iroh_using_subcommand listen" -l color -d 'When to colour stderr (NO_COLOR turns `auto` off)' -r -f -a "auto\t''
always\t''
never\t''"
complete -c tensor-iroh -n "__fish_tensor_iroh_using_subcommand listen" -l stdout -d 'Write received files\' bytes to stdout instead of a directory (the ticket goes to stderr)'
complete -c tensor-iroh -n "__fish_tensor_iroh_using_subcommand listen" -l once -d 'Exit after the first sender\'s files are all received'
complete -c tensor-iroh -n "__fish_tensor_iroh_using_subcommand listen" -l force -d 'Overwrite files of the same name instead of choosing a new name'
complete -c tensor-iroh -n "__fish_tensor_iroh_using_subcommand listen" -l json -d 'JSON lines on stdout: `listening` first, then one object per file'
complete -c tensor-iroh -n "__fish_tensor_iroh_using_subcommand listen" -s v -l verbose -d 'More log output on stderr (-v: info, -vv: debug, including iroh\'s)'
complete -c tensor-iroh -n "__fish_tensor_iroh_using_subcommand listen" -s q -l quiet -d 'Only errors and warnings on stderr; no progress bars'
complete -c tensor-iroh -n "__fish_tensor_iroh_using_subcommand listen" -s h -l help -d 'Print help'
complete -c tensor-iroh -n "__fish_tensor_iroh_using_subcommand send" -l name -d 'Name the receiver stores the file under (one file only)' -r
complete -c tensor-iroh -n "__fish_tensor_iroh_using_subcommand send" -l to -d 'Another listener to send the same files to, concurrently (repeatable)' -r
complete -c tensor-iroh -n "__fish_tensor_iroh_using_subcommand send" -l compress -d 'Compress tensor data on the way, losslessly (floats by byte planes): `auto` does while the link is slower than this machine compresses, `on` always, `off` never' -r
complete -c tensor-iroh -n "__fish_tensor_iroh_using_subcommand send" -l relay -d 'Relay servers: `default` (iroh\'s public relays), `disabled`, or a relay URL' -r
complete -c tensor-iroh -n "__fish_tensor_iroh_using_subcommand send" -l key -d 'Secret key file (64 hex characters), created with mode 0600 when missing; without it, IROH_SECRET or a fresh key' -r -F
complete -c tensor-iroh -n "__fish_tensor_iroh_using_subcommand send" -l congestion -d 'Congestion controller: `auto` is BBR on paths of 4 ms or more (it holds its rate through random loss) and CUBIC on shorter ones; `bbr` or `cubic` everywhere' -r
complete -c tensor-iroh -n "__fish_tensor_iroh_using_subcommand send" -l timeout -d 'Give up connecting, or on a peer that stalls, after this many seconds' -r
complete -c tensor-iroh -n "__fish_tensor_iroh_using_subcommand send" -l color -d 'When to colour stderr (NO_COLOR turns `auto` off)' -r -f -a "auto\t''
always\t''
never\t''"
complete -c tensor-iroh -n "__fish_tensor_iroh_using_subcommand send" -l json -d 'JSON lines on stdout: one object per file, then a summary'
complete -c tensor-iroh -n "__fish_tensor_iroh_using_subcommand send" -s v -l verbose -d 'More log output on stderr (-v: info, -vv: debug, including iroh\'s)'
complete -c tensor-iroh -n "__fish_tensor_iroh_using_subcommand send" -s q -l quiet -d 'Only errors and warnings on stderr; no progress bars'
complete -c tensor-iroh -n "__fish_tensor_iroh_using_subcommand send" -s h -l help -d 'Print help'
complete -c tensor-iroh -n "__fish_tensor_iroh_using_subcommand pull" -l out -d 'Directory to write to [default: the current directory]' -r -F
complete -c tensor-iroh -n "__fish_tensor_iroh_using_subcommand pull" -l compress -d 'Compress tensor data on the way, losslessly (floats by byte planes): `auto` does while the link is slower than this machine compresses, `on` always, `off` never' -r
complete -c tensor-iroh -n "__fish_tensor_iroh_using_subcommand pull" -l relay -d 'Relay servers: `default` (iroh\'s public relays), `disabled`, or a relay URL' -r
complete -c tensor-iroh -n "__fish_tensor_iroh_using_subcommand pull" -l key -d 'Secret key file (64 hex characters), created with mode 0600 when missing; without it, IROH_SECRET or a fresh key' -r -F
complete -c tensor-iroh -n "__fish_tensor_iroh_using_subcommand pull" -l congestion -d 'Congestion controller: `auto` is BBR on paths of 4 ms or more (it holds its rate through random loss) and CUBIC on shorter ones; `bbr` or `cubic` everywhere' -r
complete -c tensor-iroh -n "__fish_tensor_iroh_using_subcommand pull" -l timeout -d 'Give up connecting, or on a peer that stalls, after this many seconds' -r
complete -c tensor-iroh -n "__fish_tensor_iroh_using_subcommand pull" -l color -d 'When to colour stderr (NO_COLOR turns `auto` off)' -r -f -a "auto\t''
always\t''
never\t''"
complete -c tensor-iroh -n "__fish_tensor_iroh_using_subcommand pull" -l stdout -d 'Write one safetensors stream holding every selected tensor to stdout'
complete -c tensor-iroh -n "__fish_tensor_iroh_using_subcommand pull" -l list -d 'List the served tensors (name, dtype, shape, bytes, file) and fetch nothing'
complete -c tensor-iroh -n "__fish_tensor_iroh_using_subcommand pull" -l json -d 'JSON lines on stdout'
complete -c tensor-iroh -n "__fish_tensor_iroh_using_subcommand pull" -l force -d 'Overwrite files of the same name instead of choosing a new name'
complete -c tensor-iroh -n "__fish_tensor_iroh_using_subcommand pull" -s v -l verbose -d 'More log output on stderr (-v: info, -vv: debug, including iroh\'s)'
complete -c tensor-iroh -n "__fish_tensor_iroh_using_subcommand pull" -s q -l quiet -d 'Only errors and warnings on stderr; no progress bars'
complete -c tensor-iroh -n "__fish_tensor_iroh_using_subcommand pull" -s h -l help -d 'Print help'
complete -c tensor-iroh -n "__fish_tensor_iroh_using_subcommand bench" -l sizes -d 'Sizes to measure, with K, M, G or T suffixes (binary; 1.5M is fine)' -r
complete -c tensor-iroh -n "__fish_tensor_iroh_using_subcommand bench" -l iters -d 'Round trips per size [default: enough to move 768 MiB, between 3 and 200]' -r
complete -c tensor-iroh -n "__fish_tensor_iroh_using_subcommand bench" -l concurrency -d 'Small tensors in flight at once for the tensors-per-second figure' -r
complete -c tensor-iroh -n "__fish_tensor_iroh_using_subcommand bench" -l compress -d 'Compress on the way (the data is then synthetic bf16 weights, not random bytes): `on` measures the codec, `auto` the default of send and pull; `off` measures the transport alone' -r
complete -c tensor-iroh -n "__fish_tensor_iroh_using_subcommand bench" -l relay -d 'Relay servers: `default` (iroh\'s public relays), `disabled`, or a relay URL' -r
complete -c tensor-iroh -n "__fish_tensor_iroh_using_subcommand bench" -l key -d 'Secret key file (64 hex characters), created with mode 0600 when missing; without it, IROH_SECRET or a fresh key' -r -F
complete -c tensor-iroh -n "__fish_tensor_iroh_using_subcommand bench" -l congestion -d 'Congestion controller: `auto` is BBR on paths of 4 ms or more (it holds its rate through random loss) and CUBIC on shorter ones; `bbr` or `cubic` everywhere' -r
complete -c tensor-iroh -n "__fish_tensor_iroh_using_subcommand bench" -l timeout -d 'Give up connecting, or on a peer that stalls, after this many seconds' -r
complete -c tensor-iroh -n "__fish_tensor_iroh_using_subcommand bench" -l color -d 'When to colour stderr (NO_COLOR turns `auto` off)' -r -f -a "auto\t''
always\t''
never\t''"
complete -c tensor-iroh -n "__fish_tensor_iroh_using_subcommand bench" -l raw -d 'Measure a bare iroh stream: no files, no hashing, no acknowledgement per chunk'
complete -c tensor-iroh -n "__fish_tensor_iroh_using_subcommand bench" -l json -d 'One JSON object per size on stdout and nothing else'
complete -c tensor-iroh -n "__fish_tensor_iroh_using_subcommand bench" -s v -l verbose -d 'More log output on stderr (-v: info, -vv: debug, including iroh\'s)'
complete -c tensor-iroh -n "__fish_tensor_iroh_using_subcommand bench" -s q -l quiet -d 'Only errors and warnings on stderr; no progress bars'
complete -c tensor-iroh -n "__fish_tensor_iroh_using_subcommand bench" -s h -l help -d 'Print help'
complete -c tensor-iroh -n "__fish_tensor_iroh_using_subcommand id" -l key -d 'Secret key file, created with mode 0600 when missing; without it, IROH_SECRET' -r -F
complete -c tensor-iroh -n "__fish_tensor_iroh_using_subcommand id" -l color -d 'When to colour stderr (NO_COLOR turns `auto` off)' -r -f -a "auto\t''
always\t''
never\t''"
complete -c tensor-iroh -n "__fish_tensor_iroh_using_subcommand id" -s v -l verbose -d 'More log output on stderr (-v: info, -vv: debug, including iroh\'s)'
complete -c tensor-iroh -n "__fish_tensor_iroh_using_subcommand id" -s q -l quiet -d 'Only errors and warnings on stderr; no progress bars'
complete -c tensor-iroh -n "__fish_tensor_iroh_using_subcommand id" -s h -l help -d 'Print help'
complete -c tensor-iroh -n "__fish_tensor_iroh_using_subcommand completions" -l color -d 'When to colour stderr (NO_COLOR turns `auto` off)' -r -f -a "auto\t''
always\t''
never\t''"
complete -c tensor-iroh -n "__fish_tensor_iroh_using_subcommand completions" -s v -l verbose -d 'More log output on stderr (-v: info, -vv: debug, including iroh\'s)'
complete -c tensor-iroh -n "__fish_tensor_iroh_using_subcommand completions" -s q -l quiet -d 'Only errors and warnings on stderr; no progress bars'
complete -c tensor-iroh -n "__fish_tensor_iroh_using_subcommand completions" -s h -l help -d 'Print help'
complete -c tensor-iroh -n "__fish_tensor_iroh_using_subcommand help; and not __fish_seen_subcommand_from listen send pull bench id completions help" -f -a "listen" -d 'Print a ticket and receive files from `send` (and serve files to `pull`)'
complete -c tensor-iroh -n "__fish_tensor_iroh_using_subcommand help; and not __fish_seen_subcommand_from listen send pull bench id completions help" -f -a "send" -d 'Send .npy/.safetensors files (or directories of them) to listeners'
complete -c tensor-iroh -n "__fish_tensor_iroh_using_subcommand help; and not __fish_seen_subcommand_from listen send pull bench id completions help" -f -a "pull" -d 'Fetch files or tensors from a listener started with --serve'
complete -c tensor-iroh -n "__fish_tensor_iroh_using_subcommand help; and not __fish_seen_subcommand_from listen send pull bench id completions help" -f -a "bench" -d 'Measure latency and throughput against a listener (or one in this process)'
complete -c tensor-iroh -n "__fish_tensor_iroh_using_subcommand help; and not __fish_seen_subcommand_from listen send pull bench id completions help" -f -a "id" -d 'Print the endpoint id of a key (creating the key file when missing)'
complete -c tensor-iroh -n "__fish_tensor_iroh_using_subcommand help; and not __fish_seen_subcommand_from listen send pull bench id completions help" -f -a "completions" -d 'Print a completion script for a shell'
complete -c tensor-iroh -n "__fish_tensor_iroh_using_subcommand help; and not __fish_seen_subcommand_from listen send pull bench id completions help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
