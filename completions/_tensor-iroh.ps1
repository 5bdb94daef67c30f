
using namespace System.Management.Automation
using namespace System.Management.Automation.Language

Register-ArgumentCompleter -Native -CommandName 'tensor-iroh' -ScriptBlock {
    param($wordToComplete, $commandAst, $cursorPosition)

    $commandElements = $commandAst.CommandElements
    $command = @(
        'tensor-iroh'
        for ($i = 1; $i -lt $commandElements.Count; $i++) {
            $element = $commandElements[$i]
            if ($element -isnot [StringConstantExpressionAst] -or
                $element.StringConstantType -ne [StringConstantType]::BareWord -or
                $element.Value.StartsWith('-') -or
                $element.Value -eq $wordToComplete) {
                break
        }
        $element.Value
    }) -join ';'

    $completions = @(switch ($command) {
        'tensor-iroh' {
            [CompletionResult]::new('--color', '--color', [CompletionResultType]::ParameterName, 'When to colour stderr (NO_COLOR turns `auto` off)')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'More log output on stderr (-v: info, -vv: debug, including iroh''s)')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'More log output on stderr (-v: info, -vv: debug, including iroh''s)')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Only errors and warnings on stderr; no progress bars')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Only errors and warnings on stderr; no progress bars')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('listen', 'listen', [CompletionResultType]::ParameterValue, 'Print a ticket and receive files from `send` (and serve files to `pull`)')
            [CompletionResult]::new('send', 'send', [CompletionResultType]::ParameterValue, 'Send .npy/.safetensors files (or directories of them) to listeners')
            [CompletionResult]::new('pull', 'pull', [CompletionResultType]::ParameterValue, 'Fetch files or tensors from a listener started with --serve')
            [CompletionResult]::new('bench', 'bench', [CompletionResultType]::ParameterValue, 'Measure latency and throughput against a listener (or one in this process)')
            [CompletionResult]::new('id', 'id', [CompletionResultType]::ParameterValue, 'Print the endpoint id of a key (creating the key file when missing)')
            [CompletionResult]::new('completions', 'completions', [CompletionResultType]::ParameterValue, 'Print a completion script for a shell')
            [CompletionResult]::new('help', 'help', [CompletionResultType]::ParameterValue, 'Print this message or the help of the given subcommand(s)')
            break
        }
        'tensor-iroh;listen' {
            [CompletionResult]::new('--out', '--out', [CompletionResultType]::ParameterName, 'Directory for received files [default: the current directory; with --serve, uploads are refused unless given]')
            [CompletionResult]::new('--serve', '--serve', [CompletionResultType]::ParameterName, 'Serve these .npy/.safetensors files, or the ones in these directories, to `pull`')
            [CompletionResult]::new('--allow', '--allow', [CompletionResultType]::ParameterName, 'Admit only this endpoint id (repeatable); anyone with the ticket otherwise')
            [CompletionResult]::new('--bind', '--bind', [CompletionResultType]::ParameterName, 'Local UDP address to bind, e.g. 0.0.0.0:4433 [default: any; with a lasting key (--key, IROH_SECRET) a port derived from it, so the ticket survives restarts]')
            [CompletionResult]::new('--relay', '--relay', [CompletionResultType]::ParameterName, 'Relay servers: `default` (iroh''s public relays), `disabled`, or a relay URL')
            [CompletionResult]::new('--key', '--key', [CompletionResultType]::ParameterName, 'Secret key file (64 hex characters), created with mode 0600 when missing; without it, IROH_SECRET or a fresh key')
            [CompletionResult]::new('--congestion', '--congestion', [CompletionResultType]::ParameterName, 'Congestion controller: `auto` is BBR on paths of 4 ms or more (it holds its rate through random loss) and CUBIC on shorter ones; `bbr` or `cubic` everywhere')
            [CompletionResult]::new('--color', '--color', [CompletionResultType]::ParameterName, 'When to colour stderr (NO_COLOR turns `auto` off)')
            [CompletionResult]::new('--stdout', '--stdout', [CompletionResultType]::ParameterName, 'Write received files'' bytes to stdout instead of a directory (the ticket goes to stderr)')
            [CompletionResult]::new('--once', '--once', [CompletionResultType]::ParameterName, 'Exit after the first sender''s files are all received')
            [CompletionResult]::new('--force', '--force', [CompletionResultType]::ParameterName, 'Overwrite files of the same name instead of choosing a new name')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'JSON lines on stdout: `listening` first, then one object per file')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'More log output on stderr (-v: info, -vv: debug, including iroh''s)')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'More log output on stderr (-v: info, -vv: debug, including iroh''s)')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Only errors and warnings on stderr; no progress bars')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Only errors and warnings on stderr; no progress bars')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            break
        }
        'tensor-iroh;send' {
            [CompletionResult]::new('--name', '--name', [CompletionResultType]::ParameterName, 'Name the receiver stores the file under (one file only)')
            [CompletionResult]::new('--to', '--to', [CompletionResultType]::ParameterName, 'Another listener to send the same files to, concurrently (repeatable)')
            [CompletionResult]::new('--compress', '--compress', [CompletionResultType]::ParameterName, 'Compress tensor data on the way, losslessly (floats by byte planes): `auto` does while the link is slower than this machine compresses, `on` always, `off` never')
            [CompletionResult]::new('--relay', '--relay', [CompletionResultType]::ParameterName, 'Relay servers: `default` (iroh''s public relays), `disabled`, or a relay URL')
            [CompletionResult]::new('--key', '--key', [CompletionResultType]::ParameterName, 'Secret key file (64 hex characters), created with mode 0600 when missing; without it, IROH_SECRET or a fresh key')
            [CompletionResult]::new('--congestion', '--congestion', [CompletionResultType]::ParameterName, 'Congestion controller: `auto` is BBR on paths of 4 ms or more (it holds its rate through random loss) and CUBIC on shorter ones; `bbr` or `cubic` everywhere')
            [CompletionResult]::new('--timeout', '--timeout', [CompletionResultType]::ParameterName, 'Give up connecting, or on a peer that stalls, after this many seconds')
            [CompletionResult]::new('--color', '--color', [CompletionResultType]::ParameterName, 'When to colour stderr (NO_COLOR turns `auto` off)')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'JSON lines on stdout: one object per file, then a summary')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'More log output on stderr (-v: info, -vv: debug, including iroh''s)')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'More log output on stderr (-v: info, -vv: debug, including iroh''s)')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Only errors and warnings on stderr; no progress bars')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Only errors and warnings on stderr; no progress bars')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            break
        }
        'tensor-iroh;pull' {
            [CompletionResult]::new('--out', '--out', [CompletionResultType]::ParameterName, 'Directory to write to [default: the current directory]')
            [CompletionResult]::new('--compress', '--compress', [CompletionResultType]::ParameterName, 'Compress tensor data on the way, losslessly (floats by byte planes): `auto` does while the link is slower than this machine compresses, `on` always, `off` never')
            [CompletionResult]::new('--relay', '--relay', [CompletionResultType]::ParameterName, 'Relay servers: `default` (iroh''s public relays), `disabled`, or a relay URL')
            [CompletionResult]::new('--key', '--key', [CompletionResultType]::ParameterName, 'Secret key file (64 hex characters), created with mode 0600 when missing; without it, IROH_SECRET or a fresh key')
            [CompletionResult]::new('--congestion', '--congestion', [CompletionResultType]::ParameterName, 'Congestion controller: `auto` is BBR on paths of 4 ms or more (it holds its rate through random loss) and CUBIC on shorter ones; `bbr` or `cubic` everywhere')
            [CompletionResult]::new('--timeout', '--timeout', [CompletionResultType]::ParameterName, 'Give up connecting, or on a peer that stalls, after this many seconds')
            [CompletionResult]::new('--color', '--color', [CompletionResultType]::ParameterName, 'When to colour stderr (NO_COLOR turns `auto` off)')
            [CompletionResult]::new('--stdout', '--stdout', [CompletionResultType]::ParameterName, 'Write one safetensors stream holding every selected tensor to stdout')
            [CompletionResult]::new('--list', '--list', [CompletionResultType]::ParameterName, 'List the served tensors (name, dtype, shape, bytes, file) and fetch nothing')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'JSON lines on stdout')
            [CompletionResult]::new('--force', '--force', [CompletionResultType]::ParameterName, 'Overwrite files of the same name instead of choosing a new name')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'More log output on stderr (-v: info, -vv: debug, including iroh''s)')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'More log output on stderr (-v: info, -vv: debug, including iroh''s)')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Only errors and warnings on stderr; no progress bars')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Only errors and warnings on stderr; no progress bars')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            break
        }
        'tensor-iroh;bench' {
            [CompletionResult]::new('--sizes', '--sizes', [CompletionResultType]::ParameterName, 'Sizes to measure, with K, M, G or T suffixes (binary; 1.5M is fine)')
            [CompletionResult]::new('--iters', '--iters', [CompletionResultType]::ParameterName, 'Round trips per size [default: enough to move 768 MiB, between 3 and 200]')
            [CompletionResult]::new('--concurrency', '--concurrency', [CompletionResultType]::ParameterName, 'Small tensors in flight at once for the tensors-per-second figure')
            [CompletionResult]::new('--compress', '--compress', [CompletionResultType]::ParameterName, 'Compress on the way (the data is then synthetic bf16 weights, not random bytes): `on` measures the codec, `auto` the default of send and pull; `off` measures the transport alone')
            [CompletionResult]::new('--relay', '--relay', [CompletionResultType]::ParameterName, 'Relay servers: `default` (iroh''s public relays), `disabled`, or a relay URL')
            [CompletionResult]::new('--key', '--key', [CompletionResultType]::ParameterName, 'Secret key file (64 hex characters), created with mode 0600 when missing; without it, IROH_SECRET or a fresh key')
            [CompletionResult]::new('--congestion', '--congestion', [CompletionResultType]::ParameterName, 'Congestion controller: `auto` is BBR on paths of 4 ms or more (it holds its rate through random loss) and CUBIC on shorter ones; `bbr` or `cubic` everywhere')
            [CompletionResult]::new('--timeout', '--timeout', [CompletionResultType]::ParameterName, 'Give up connecting, or on a peer that stalls, after this many seconds')
            [CompletionResult]::new('--color', '--color', [CompletionResultType]::ParameterName, 'When to colour stderr (NO_COLOR turns `auto` off)')
            [CompletionResult]::new('--raw', '--raw', [CompletionResultType]::ParameterName, 'Measure a bare iroh stream: no files, no hashing, no acknowledgement per chunk')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'One JSON object per size on stdout and nothing else')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'More log output on stderr (-v: info, -vv: debug, including iroh''s)')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'More log output on stderr (-v: info, -vv: debug, including iroh''s)')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Only errors and warnings on stderr; no progress bars')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Only errors and warnings on stderr; no progress bars')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            break
        }
        'tensor-iroh;id' {
            [CompletionResult]::new('--key', '--key', [CompletionResultType]::ParameterName, 'Secret key file, created with mode 0600 when missing; without it, IROH_SECRET')
            [CompletionResult]::new('--color', '--color', [CompletionResultType]::ParameterName, 'When to colour stderr (NO_COLOR turns `auto` off)')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'More log output on stderr (-v: info, -vv: debug, including iroh''s)')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'More log output on stderr (-v: info, -vv: debug, including iroh''s)')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Only errors and warnings on stderr; no progress bars')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Only errors and warnings on stderr; no progress bars')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            break
        }
        'tensor-iroh;completions' {
            [CompletionResult]::new('--color', '--color', [CompletionResultType]::ParameterName, 'When to colour stderr (NO_COLOR turns `auto` off)')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'More log output on stderr (-v: info, -vv: debug, including iroh''s)')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'More log output on stderr (-v: info, -vv: debug, including iroh''s)')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Only errors and warnings on stderr; no progress bars')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Only errors and warnings on stderr; no progress bars')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            break
        }
        'tensor-iroh;help' {
            [CompletionResult]::new('listen', 'listen', [CompletionResultType]::ParameterValue, 'Print a ticket and receive files from `send` (and serve files to `pull`)')
            [CompletionResult]::new('send', 'send', [CompletionResultType]::ParameterValue, 'Send .npy/.safetensors files (or directories of them) to listeners')
            [CompletionResult]::new('pull', 'pull', [CompletionResultType]::ParameterValue, 'Fetch files or tensors from a listener started with --serve')
            [CompletionResult]::new('bench', 'bench', [CompletionResultType]::ParameterValue, 'Measure latency and throughput against a listener (or one in this process)')
            [CompletionResult]::new('id', 'id', [CompletionResultType]::ParameterValue, 'Print the endpoint id of a key (creating the key file when missing)')
            [CompletionResult]::new('completions', 'completions', [CompletionResultType]::ParameterValue, 'Print a completion script for a shell')
            [CompletionResult]::new('help', 'help', [CompletionResultType]::ParameterValue, 'Print this message or the help of the given subcommand(s)')
            break
        }
        'tensor-iroh;help;listen' {
            break
        }
        'tensor-iroh;help;send' {
            break
        }
        'tensor-iroh;help;pull' {
            break
        }
        'tensor-iroh;help;bench' {
            break
        }
        'tensor-iroh;help;id' {
            break
        }
        'tensor-iroh;help;completions' {
            break
        }
        'tensor-iroh;help;help' {
            break
        }
    })

    $completions.Where{ $_.CompletionText -like "$wordToComplete*" } |
        Sort-Object -Property ListItemText
}
