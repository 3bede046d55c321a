/* poison.h -- unbounded string functions fail the build (HAProxy's trick).
 * Include it after every system header. */
#ifndef MOAT_POISON_H
#define MOAT_POISON_H
#pragma GCC poison strcpy strcat sprintf vsprintf gets stpcpy
#endif
