/** Quote one word for a POSIX shell (the remote side of ssh always runs one). */
export function shQuote(word: string): string {
  if (/^[A-Za-z0-9_@%+=:,./-]+$/.test(word)) return word
  return `'${word.replaceAll("'", `'\\''`)}'`
}

export function shJoin(words: readonly string[]): string {
  return words.map(shQuote).join(' ')
}
