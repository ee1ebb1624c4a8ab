# Shared by the launch scripts (sourced from the repository root): shell quoting and dry runs.
# shellcheck shell=bash

# Quotes words for a POSIX shell: plain words as they are, others in single quotes.
quote_words() {
  local word out=()
  for word in "$@"; do
    if [[ $word =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
      out+=("$word")
    else
      out+=("'${word//\'/\'\\\'\'}'")
    fi
  done
  printf '%s\n' "${out[*]}"
}

# Prints a command, shell-quoted, when dry_run is 1; runs it otherwise.
run() {
  if [[ ${dry_run:-0} == 1 ]]; then
    quote_words "$@"
  else
    "$@"
  fi
}
