/* poison.h -- unbounded string functions fail the build (HAProxy's trick).
 * Include it after every system header. With _FORTIFY_SOURCE some of them
 * are macros; they are never used, so drop the macros before poisoning. */
#ifndef MOAT_POISON_H
#define MOAT_POISON_H
#undef strcpy
#undef strcat
#undef sprintf
#undef vsprintf
#undef gets
#undef stpcpy
#pragma GCC poison strcpy strcat sprintf vsprintf gets stpcpy
#endif
