
use builtin;
use str;

set edit:completion:arg-completer[tensor-iroh] = {|@words|
    fn spaces {|n|
        builtin:repeat $n ' ' | str:join ''
    }
    fn cand {|text desc|
        edit:complex-candidate $text &display=$text' '(spaces (- 14 (wcswidth $text)))$desc
    }
    var command = 'tensor-iroh'
    for word $words[1..-1] {
        if (str:has-prefix $word '-') {
            break
        }
        set command = $command';'$word
    }
    var completions = [
        &'tensor-iroh'= {
            cand --color 'When to colour stderr (NO_COLOR turns `auto` off)'
            cand -v 'More log output on stderr (-v: info, -vv: debug, including iroh''s)'
            cand --verbose 'More log output on stderr (-v: info, -vv: debug, including iroh''s)'
            cand -q 'Only errors and warnings on stderr; no progress bars'
            cand --quiet 'Only errors and warnings on stderr; no progress bars'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
            cand listen 'Print a ticket and receive files from `send` (and serve files to `pull`)'
            cand send 'Send .npy/.safetensors files (or directories of them) to listeners'
            cand pull 'Fetch files or tensors from a listener started with --serve'
            cand bench 'Measure latency and throughput against a listener (or one in this process)'
            cand id 'Print the endpoint id of a key (creating the key file when missing)'
            cand completions 'Print a completion script for a shell'
            cand help 'Print this message or the help of the given subcommand(s)'
        }
        &'tensor-iroh;listen'= {
            cand --out 'Directory for received files [default: the current directory; with --serve, uploads are refused unless given]'
            cand --serve 'Serve these .npy/.safetensors files, or the ones in these directories, to `pull`'
            cand --allow 'Admit only this endpoint id (repeatable); anyone with the ticket otherwise'
            cand --bind 'Local UDP address to bind, e.g. 0.0.0.0:4433 [default: any; with a lasting key (--key, IROH_SECRET) a port derived from it, so the ticket survives restarts]'
            cand --relay 'Relay servers: `default` (iroh''s public relays), `disabled`, or a relay URL'
            cand --key 'Secret key file (64 hex characters), created with mode 0600 when missing; without it, IROH_SECRET or a fresh key'
            cand --congestion 'Congestion controller: `auto` is BBR on paths of 4 ms or more (it holds its rate through random loss) and CUBIC on shorter ones; `bbr` or `cubic` everywhere'
            cand --color 'When to colour stderr (NO_COLOR turns `auto` off)'
            cand --stdout 'Write received files'' bytes to stdout instead of a directory (the ticket goes to stderr)'
            cand --once 'Exit after the first sender''s files are all received'
            cand --force 'Overwrite files of the same name instead of choosing a new name'
            cand --json 'JSON lines on stdout: `listening` first, then one object per file'
            cand -v 'More log output on stderr (-v: info, -vv: debug, including iroh''s)'
            cand --verbose 'More log output on stderr (-v: info, -vv: debug, including iroh''s)'
            cand -q 'Only errors and warnings on stderr; no progress bars'
            cand --quiet 'Only errors and warnings on stderr; no progress bars'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'tensor-iroh;send'= {
            cand --name 'Name the receiver stores the file under (one file only)'
            cand --to 'Another listener to send the same files to, concurrently (repeatable)'
            cand --compress 'Compress tensor data on the way, losslessly (floats by byte planes): `auto` does while the link is slower than this machine compresses, `on` always, `off` never'
            cand --relay 'Relay servers: `default` (iroh''s public relays), `disabled`, or a relay URL'
            cand --key 'Secret key file (64 hex characters), created with mode 0600 when missing; without it, IROH_SECRET or a fresh key'
            cand --congestion 'Congestion controller: `auto` is BBR on paths of 4 ms or more (it holds its rate through random loss) and CUBIC on shorter ones; `bbr` or `cubic` everywhere'
            cand --timeout 'Give up connecting, or on a peer that stalls, after this many seconds'
            cand --color 'When to colour stderr (NO_COLOR turns `auto` off)'
            cand --json 'JSON lines on stdout: one object per file, then a summary'
            cand -v 'More log output on stderr (-v: info, -vv: debug, including iroh''s)'
            cand --verbose 'More log output on stderr (-v: info, -vv: debug, including iroh''s)'
            cand -q 'Only errors and warnings on stderr; no progress bars'
            cand --quiet 'Only errors and warnings on stderr; no progress bars'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'tensor-iroh;pull'= {
            cand --out 'Directory to write to [default: the current directory]'
            cand --compress 'Compress tensor data on the way, losslessly (floats by byte planes): `auto` does while the link is slower than this machine compresses, `on` always, `off` never'
            cand --relay 'Relay servers: `default` (iroh''s public relays), `disabled`, or a relay URL'
            cand --key 'Secret key file (64 hex characters), created with mode 0600 when missing; without it, IROH_SECRET or a fresh key'
            cand --congestion 'Congestion controller: `auto` is BBR on paths of 4 ms or more (it holds its rate through random loss) and CUBIC on shorter ones; `bbr` or `cubic` everywhere'
            cand --timeout 'Give up connecting, or on a peer that stalls, after this many seconds'
            cand --color 'When to colour stderr (NO_COLOR turns `auto` off)'
            cand --stdout 'Write one safetensors stream holding every selected tensor to stdout'
            cand --list 'List the served tensors (name, dtype, shape, bytes, file) and fetch nothing'
            cand --json 'JSON lines on stdout'
            cand --force 'Overwrite files of the same name instead of choosing a new name'
            cand -v 'More log output on stderr (-v: info, -vv: debug, including iroh''s)'
            cand --verbose 'More log output on stderr (-v: info, -vv: debug, including iroh''s)'
            cand -q 'Only errors and warnings on stderr; no progress bars'
            cand --quiet 'Only errors and warnings on stderr; no progress bars'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'tensor-iroh;bench'= {
            cand --sizes 'Sizes to measure, with K, M, G or T suffixes (binary; 1.5M is fine)'
            cand --iters 'Round trips per size [default: enough to move 768 MiB, between 3 and 200]'
            cand --concurrency 'Small tensors in flight at once for the tensors-per-second figure'
            cand --compress 'Compress on the way (the data is then synthetic bf16 weights, not random bytes): `on` measures the codec, `auto` the default of send and pull; `off` measures the transport alone'
            cand --relay 'Relay servers: `default` (iroh''s public relays), `disabled`, or a relay URL'
            cand --key 'Secret key file (64 hex characters), created with mode 0600 when missing; without it, IROH_SECRET or a fresh key'
            cand --congestion 'Congestion controller: `auto` is BBR on paths of 4 ms or more (it holds its rate through random loss) and CUBIC on shorter ones; `bbr` or `cubic` everywhere'
            cand --timeout 'Give up connecting, or on a peer that stalls, after this many seconds'
            cand --color 'When to colour stderr (NO_COLOR turns `auto` off)'
            cand --raw 'Measure a bare iroh stream: no files, no hashing, no acknowledgement per chunk'
            cand --json 'One JSON object per size on stdout and nothing else'
            cand -v 'More log output on stderr (-v: info, -vv: debug, including iroh''s)'
            cand --verbose 'More log output on stderr (-v: info, -vv: debug, including iroh''s)'
            cand -q 'Only errors and warnings on stderr; no progress bars'
            cand --quiet 'Only errors and warnings on stderr; no progress bars'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'tensor-iroh;id'= {
            cand --key 'Secret key file, created with mode 0600 when missing; without it, IROH_SECRET'
            cand --color 'When to colour stderr (NO_COLOR turns `auto` off)'
            cand -v 'More log output on stderr (-v: info, -vv: debug, including iroh''s)'
            cand --verbose 'More log output on stderr (-v: info, -vv: debug, including iroh''s)'
            cand -q 'Only errors and warnings on stderr; no progress bars'
            cand --quiet 'Only errors and warnings on stderr; no progress bars'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'tensor-iroh;completions'= {
            cand --color 'When to colour stderr (NO_COLOR turns `auto` off)'
            cand -v 'More log output on stderr (-v: info, -vv: debug, including iroh''s)'
            cand --verbose 'More log output on stderr (-v: info, -vv: debug, including iroh''s)'
            cand -q 'Only errors and warnings on stderr; no progress bars'
            cand --quiet 'Only errors and warnings on stderr; no progress bars'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'tensor-iroh;help'= {
            cand listen 'Print a ticket and receive files from `send` (and serve files to `pull`)'
            cand send 'Send .npy/.safetensors files (or directories of them) to listeners'
            cand pull 'Fetch files or tensors from a listener started with --serve'
            cand bench 'Measure latency and throughput against a listener (or one in this process)'
            cand id 'Print the endpoint id of a key (creating the key file when missing)'
            cand completions 'Print a completion script for a shell'
            cand help 'Print this message or the help of the given subcommand(s)'
        }
        &'tensor-iroh;help;listen'= {
        }
        &'tensor-iroh;help;send'= {
        }
        &'tensor-iroh;help;pull'= {
        }
        &'tensor-iroh;help;bench'= {
        }
        &'tensor-iroh;help;id'= {
        }
        &'tensor-iroh;help;completions'= {
        }
        &'tensor-iroh;help;help'= {
        }
    ]
    $completions[$command]
}
