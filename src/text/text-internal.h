/* text-internal.h: what the tokenizer and the tiktoken vocab builder share. */
#ifndef TERN_TEXT_INTERNAL_H
#define TERN_TEXT_INTERNAL_H

#include <stdint.h>

/* GPT-2 bytes_to_unicode (spec 4.3): for every byte, the UTF-8 text of its code point
 * (utf8[b], len[b] bytes) and, when cp_to_byte is not NULL, the inverse map (512 entries,
 * -1 where no byte maps). */
void tern_gpt2_byte_maps(char utf8[256][3], uint8_t len[256], int16_t *cp_to_byte);

#endif
