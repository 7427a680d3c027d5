/**
 * oclif postrun hook: after `box autocomplete` (or `autocomplete:create`) has written the
 * plugin's bash and zsh scripts, box adds to them the completion of machine and box names.
 * The plugin's 3.x scripts are static and take no per-argument completer, and its commands
 * cannot be subclassed (the package exports only its index), so box edits the files it wrote:
 * bash gets a function that falls back to `box __complete` (completion.ts) where the plugin's
 * has nothing to offer; zsh's argument action, file names, becomes one that asks box first.
 */
import {readFile, writeFile} from 'node:fs/promises'
import {join} from 'node:path'

import type {Hook} from '@oclif/core'

const MARK = '# box: names from the Boxfile and the store'

export function bashWithNames(script: string, bin: string): string {
  if (script.includes(MARK)) return script
  return `${script}
${MARK} where a command takes them, and flags
# after its arguments, where the function above has nothing; else file names (a path).
_${bin}_complete_names()
{
  _${bin}_autocomplete
  local names
  if (( \${#COMPREPLY[@]} == 0 && COMP_CWORD >= 2 )); then
    if names=$("\${COMP_WORDS[0]}" __complete "\${COMP_WORDS[@]:1:COMP_CWORD}" 2>/dev/null); then
      [[ -n "$names" ]] && mapfile -t COMPREPLY <<<"$names"
    else
      compopt -o default 2>/dev/null
    fi
  fi
  return 0
}
complete -F _${bin}_complete_names ${bin}
`
}

/** The action the plugin gives every command's arguments (file names). */
const ZSH_FILES_ACTION = '"*: :_files"'

export function zshWithNames(script: string, bin: string): string | undefined {
  if (script.includes(MARK)) return script
  const definition = `\n_${bin}() {\n`
  if (!script.includes(ZSH_FILES_ACTION) || !script.includes(definition)) return undefined
  const names = `
${MARK} where a command takes them, else file names.
_${bin}_names() {
  local -a typed candidates
  local out
  typed=(\${(z)LBUFFER})
  [[ $LBUFFER == *[[:space:]] ]] && typed+=('')
  if out=$(\${typed[1]} __complete "\${(@)typed[2,-1]}" 2>/dev/null); then
    candidates=(\${(f)out})
    compadd -a candidates
  else
    _files
  fi
}
`
  return script.replaceAll(ZSH_FILES_ACTION, `"*: :_${bin}_names"`).replace(definition, `${names}${definition}`)
}

const hook: Hook<'postrun'> = async function (options) {
  const id = options.Command?.id
  if (id !== 'autocomplete' && id !== 'autocomplete:create') return
  const {bin, cacheDir} = options.config
  const functions = join(cacheDir, 'autocomplete', 'functions')
  const bashFile = join(functions, 'bash', `${bin}.bash`)
  const zshFile = join(functions, 'zsh', `_${bin}`)
  const bash = await readFile(bashFile, 'utf8').catch(() => undefined)
  if (bash !== undefined) await writeFile(bashFile, bashWithNames(bash, bin))
  const zsh = await readFile(zshFile, 'utf8').catch(() => undefined)
  if (zsh !== undefined) {
    const edited = zshWithNames(zsh, bin)
    if (edited === undefined)
      this.warn(`${zshFile}: not the script box knows how to extend; zsh completes no machine names`)
    else await writeFile(zshFile, edited)
  }
}

export default hook
