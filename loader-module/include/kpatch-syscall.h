/* SPDX-License-Identifier: GPL-2.0 */
/*
 * KPATCH_SYSCALL_DEFINE1..6: SYSCALL_DEFINE1..6 for code in a live update.
 *
 * The kernel's SYSCALL_DEFINEx adds, besides the functions, static tracing
 * metadata (SYSCALL_METADATA: __syscall_meta_*, types_*, args_* and event
 * structures in __syscalls_metadata and _ftrace_events) and error-injection
 * list entries (ALLOW_ERROR_INJECTION).  Those already exist in the running
 * kernel; emitting them again from an update would be new data in special
 * sections that cannot be patched in place.  These macros define the same
 * functions under the same names (the x86-64 stub __x64_sys_<name>, the ia32
 * stub __ia32_sys_<name>, __se_sys_<name> and __do_sys_<name>) and nothing
 * else, so the differ sees only changed functions.
 *
 * Written from arch/x86/include/asm/syscall_wrapper.h of Linux 6.1; only
 * x86-64 is supported.
 */
#ifndef _KSPLICE_KPATCH_SYSCALL_H
#define _KSPLICE_KPATCH_SYSCALL_H

#include <linux/syscalls.h>

#ifndef CONFIG_X86_64
#error "kpatch-syscall.h: ksplice supports x86-64 only"
#endif

/* The pt_regs stub of one ABI, without its error-injection entry. */
#define __KSPLICE_SYS_STUBx(abi, name, ...)				\
	long __##abi##_##name(const struct pt_regs *regs);		\
	long __##abi##_##name(const struct pt_regs *regs)		\
	{								\
		return __se_##name(__VA_ARGS__);			\
	}

#define __KSPLICE_X64_SYS_STUBx(x, name, ...)				\
	__KSPLICE_SYS_STUBx(x64, sys##name,				\
			    SC_X86_64_REGS_TO_ARGS(x, __VA_ARGS__))

#ifdef CONFIG_IA32_EMULATION
#define __KSPLICE_IA32_SYS_STUBx(x, name, ...)				\
	__KSPLICE_SYS_STUBx(ia32, sys##name,				\
			    SC_IA32_REGS_TO_ARGS(x, __VA_ARGS__))
#else
#define __KSPLICE_IA32_SYS_STUBx(x, name, ...)
#endif

/* Like the arch's __SYSCALL_DEFINEx; only the metadata is left out. */
#define __KSPLICE_SYSCALL_DEFINEx(x, name, ...)				\
	static long __se_sys##name(__MAP(x, __SC_LONG, __VA_ARGS__));	\
	static inline long __do_sys##name(__MAP(x, __SC_DECL, __VA_ARGS__)); \
	__KSPLICE_X64_SYS_STUBx(x, name, __VA_ARGS__)			\
	__KSPLICE_IA32_SYS_STUBx(x, name, __VA_ARGS__)			\
	static long __se_sys##name(__MAP(x, __SC_LONG, __VA_ARGS__))	\
	{								\
		long ret = __do_sys##name(__MAP(x, __SC_CAST, __VA_ARGS__)); \
		__MAP(x, __SC_TEST, __VA_ARGS__);			\
		__PROTECT(x, ret, __MAP(x, __SC_ARGS, __VA_ARGS__));	\
		return ret;						\
	}								\
	static inline long __do_sys##name(__MAP(x, __SC_DECL, __VA_ARGS__))

#define KPATCH_SYSCALL_DEFINE1(name, ...)				\
	__KSPLICE_SYSCALL_DEFINEx(1, _##name, __VA_ARGS__)
#define KPATCH_SYSCALL_DEFINE2(name, ...)				\
	__KSPLICE_SYSCALL_DEFINEx(2, _##name, __VA_ARGS__)
#define KPATCH_SYSCALL_DEFINE3(name, ...)				\
	__KSPLICE_SYSCALL_DEFINEx(3, _##name, __VA_ARGS__)
#define KPATCH_SYSCALL_DEFINE4(name, ...)				\
	__KSPLICE_SYSCALL_DEFINEx(4, _##name, __VA_ARGS__)
#define KPATCH_SYSCALL_DEFINE5(name, ...)				\
	__KSPLICE_SYSCALL_DEFINEx(5, _##name, __VA_ARGS__)
#define KPATCH_SYSCALL_DEFINE6(name, ...)				\
	__KSPLICE_SYSCALL_DEFINEx(6, _##name, __VA_ARGS__)

#endif /* _KSPLICE_KPATCH_SYSCALL_H */
