# Sourced by the checks that run every file of events/ through its function
# (scripts/lambda_local_check.sh with cargo-lambda, scripts/sam-local.sh with `sam local invoke`):
# what each event must get, read from the one list, tests/aws/events.rs.
#
#     load_expected     fills EXPECTED[file]="Function status" (e.g. [tts-valid.json]="Tts 200");
#                       false if the list was not found
#     is_http_event F   false for the files of events/ that are not API Gateway events

declare -A EXPECTED=()
load_expected() {
    local file function status
    EXPECTED=()
    while read -r file function status; do
        EXPECTED[$file]="$function $status"
    done < <(sed -nE 's/^ *"([a-z-]+\.json)" => \(Function::([A-Za-z]+), ([0-9]+)\),.*/\1 \2 \3/p' \
        tests/aws/events.rs)
    [ "${#EXPECTED[@]}" -ge 13 ]
}

# The completion function's SQS event, and `sam local invoke`'s --env-vars file.
is_http_event() {
    [ "$1" != completion-sqs.json ] && [ "$1" != sam-local-env.json ]
}
